//! The end-to-end path: intake → queue → workers → database.

use std::time::Duration;

use erasure::startup::Role;
use serde_json::json;

use crate::helpers::{Api, TestEnv};

#[tokio::test]
async fn an_erase_request_deletes_every_target_row_and_nothing_else() {
    let env = TestEnv::new().await;
    let bots = env.account("acct-a", 3).await;
    let other = env.account("acct-b", 1).await;
    for u in ["u-1", "u-2", "u-3"] {
        env.user(u, None, None).await;
        for b in bots.iter().chain(&other) {
            env.rows(u, b, 7).await;
        }
    }
    let (_, _, token) = env.app("acct-a", &["delete_users_data"]).await;
    let before = env
        .checksum_outside(&["u-1", "u-2"], &[&bots[0], &bots[1]])
        .await;
    let svc = env.start(Role::All).await;
    let api = Api::new(&svc);

    let (code, body) = api
        .erase(
            &token,
            &json!({"userIds": ["u-1", "u-2"], "botIds": [bots[0], bots[1]]}),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["status"], "in-progress");
    let id = body["requestId"].as_str().unwrap().to_string();
    assert!(id.starts_with("eud-"));

    assert_eq!(
        env.wait_settled(&id, Duration::from_secs(30)).await,
        "completed"
    );
    for u in ["u-1", "u-2"] {
        for b in &bots[..2] {
            assert_eq!(env.count_rows(u, b).await, 0, "{u} in {b} is erased");
        }
        assert_eq!(
            env.count_rows(u, &bots[2]).await,
            21,
            "{u} in an untargeted bot is kept"
        );
    }
    assert_eq!(
        env.checksum_outside(&["u-1", "u-2"], &[&bots[0], &bots[1]])
            .await,
        before
    );

    let doc = api.status_doc(&token, &id).await;
    assert_eq!(doc.status, "completed");
    assert_eq!(doc.id, id);
    assert_eq!(doc.progress.tasks_total, 2);
    assert_eq!(doc.progress.tasks_done, 2);
    assert_eq!(doc.progress.rows_deleted.conversations, 28);
    assert_eq!(doc.progress.rows_deleted.sessions, 28);
    assert_eq!(doc.progress.rows_deleted.analytics, 28);
    assert!(doc.completed_on.is_some());
    assert!(doc.response.iter().all(|u| u.status == "SUCCESS"));
    svc.shutdown().await;
}
