// `sqlx::migrate!` embeds `migrations/` at compile time; without this, a migration added to
// the directory would not make cargo rebuild, and the binary would run without it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
