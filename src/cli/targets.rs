//! `erasure targets check`: the target catalog checked as a process checks it at start, with
//! every problem listed (and, with `--json`, as a report other tools read).

use anyhow::bail;

use crate::{
    catalog::{Problem, check::Report},
    config::Config,
    erase::{Targets, TargetsError},
    store,
};

pub async fn check(config: &Config, json: bool) -> anyhow::Result<()> {
    let file = crate::erase::load_catalog(config)
        .map(|c| c.source.to_string())
        .unwrap_or_else(|e| e.origin.to_string());
    let pool = store::connect(&config.database.url, 2, config.database.statement_timeout).await?;
    let (report, digest) = match Targets::connect(config, pool).await {
        Ok(targets) => {
            let report = targets.check(std::time::Duration::from_secs(5)).await?;
            (report, Some(targets.catalog.digest.clone()))
        }
        Err(TargetsError::Catalog(e)) => (
            Report {
                errors: e.problems,
                ..Report::default()
            },
            None,
        ),
        Err(e) => return Err(e.into()),
    };
    if json {
        let out = serde_json::json!({
            "file": file, "ok": report.is_ok(), "digest": digest,
            "errors": report.errors, "unreachable": report.unreachable, "warnings": report.warnings,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_text(&file, &report, digest.as_deref());
    }
    if !report.is_ok() {
        bail!(
            "the target catalog {file} cannot be used ({} problem(s))",
            report.errors.len() + report.unreachable.len()
        );
    }
    Ok(())
}

fn print_text(file: &str, report: &Report, digest: Option<&str>) {
    let line = |kind: &str, p: &Problem| {
        println!("{kind}: {file}: {}", p.describe());
        if let Some(sql) = &p.create_index {
            println!("    {sql}");
        }
    };
    for p in &report.errors {
        line("error", p);
    }
    for p in &report.unreachable {
        line("error", p);
    }
    for p in &report.warnings {
        line("warning", p);
    }
    if report.is_ok() {
        println!(
            "{file}: ok (catalog digest {})",
            digest.unwrap_or("unknown")
        );
    }
}
