//! The workers' job steps called directly, without a broker: planning a request and working
//! a slice of a task are functions of the database alone, and what they queue is in the
//! outbox, where the runner (or the relay) would publish it from.

use erasure::{
    contract::{EraseMessage, EraseRequest, TaskMessage, UserEntry},
    domain::{AccountId, BotId, RequestId},
    worker::{
        Ctx,
        job::{Job, JobError, Step},
        plan::{self, PlanJob},
        task::{self, TaskJob},
    },
};
use tokio_util::sync::CancellationToken;

use crate::helpers::TestEnv;

/// Account `acct-j` with `bots` bots; u-1 and u-2 with 3 rows per store in each bot; u-9 owns
/// the account (protected).
async fn platform(env: &TestEnv, bots: usize) -> Vec<BotId> {
    let bots = env.account("acct-j", bots).await;
    for user in ["u-1", "u-2", "u-9"] {
        env.user(user, None, None).await;
    }
    sqlx::query("INSERT INTO platform.account_members (account_id, user_id, role) VALUES ('acct-j', 'u-9', 'owner')")
        .execute(&env.pool)
        .await
        .unwrap();
    for bot in &bots {
        env.rows("u-1", bot, 3).await;
        env.rows("u-2", bot, 3).await;
    }
    bots.into_iter().map(BotId::new).collect()
}

/// Users of `acct-j` with 2 rows per store in each of `bots`.
async fn more_users(env: &TestEnv, bots: &[BotId], users: &[&str]) {
    for user in users {
        env.user_with_rows(user, bots, 2).await;
    }
}

/// Four requests: u-1 of all the bots, twice (each row counted once); u-2 and u-9 (the
/// account's owner, protected) of all of them; u-3 of the first two.
fn four_requests(bots: &[BotId]) -> Vec<EraseMessage> {
    vec![
        message(&["u-1"], bots),
        message(&["u-2", "u-9"], bots),
        message(&["u-1"], bots),
        message(&["u-3"], &bots[..2]),
    ]
}

/// After [`four_requests`]: u-1's, u-2's and u-3's rows gone from the bots asked (u-3 keeps
/// the third bot's), every row of `kept` still there.
async fn assert_gone(env: &TestEnv, bots: &[BotId], kept: &[&str]) {
    let gone = [("u-1", true), ("u-2", true), ("u-3", true)];
    for (user, gone) in gone.into_iter().chain(kept.iter().map(|u| (*u, false))) {
        for (i, bot) in bots.iter().enumerate() {
            let left = env.count_rows(user, bot.as_str()).await;
            let erased = gone && !(user == "u-3" && i == 2);
            assert_eq!(left == 0, erased, "{user} in {bot}: {left} rows left");
        }
    }
}

/// Each request's rows erased, once every one of them is `completed`.
async fn completed_rows(env: &TestEnv, msgs: &[EraseMessage]) -> Vec<i64> {
    let mut rows = Vec::new();
    for m in msgs {
        assert_eq!(
            env.request_status(m.request_id.as_str()).await.as_deref(),
            Some("completed")
        );
        rows.push(env.rows_deleted(m.request_id.as_str()).await);
    }
    rows
}

fn message(users: &[&str], bots: &[BotId]) -> EraseMessage {
    EraseMessage {
        request_id: RequestId::generate(),
        account_id: AccountId::new("acct-j"),
        request: EraseRequest {
            user_ids: users.iter().map(|u| UserEntry::Id(u.to_string())).collect(),
            bot_ids: bots.to_vec(),
            remove_data_from_all_bots: false,
            callback_url: None,
        },
        requested_by: "jobs-test".into(),
        requested_at: None,
    }
}

/// The task messages a step queued, as a worker would receive them.
fn queued(step: &Step) -> Vec<TaskMessage> {
    let messages = match step {
        Step::Planned { messages } | Step::Continued { messages } => messages,
        other => panic!("{other:?} queued nothing"),
    };
    messages
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect()
}

#[tokio::test]
async fn planning_decides_every_user_and_queues_one_message_for_the_bots() {
    let env = TestEnv::new().await;
    let bots = platform(&env, 3).await;
    let ctx = Ctx::built_in(env.pool.clone(), env.config());
    let msg = message(&["u-1", "u-9", "nobody"], &bots);

    let step = plan::plan(&ctx, &msg).await.unwrap();
    let tasks = queued(&step);
    assert_eq!(tasks.len(), 1, "three bots share one message");
    assert_eq!(tasks[0].bots(), bots);
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM erasure.outbox")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        outbox, 1,
        "the message is committed for the runner to publish"
    );
    let outcomes = env.user_outcomes(msg.request_id.as_str()).await;
    let statuses: Vec<(&str, Option<&str>)> = outcomes
        .iter()
        .map(|(_, s, r)| (s.as_str(), r.as_deref()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("IN_PROGRESS", None),
            ("REJECTED", Some("account_owner")),
            ("NOT_FOUND", None)
        ]
    );

    let again = plan::plan(&ctx, &msg).await.unwrap();
    assert!(matches!(again, Step::Duplicate), "{again:?}");
}

#[tokio::test]
async fn a_request_with_no_one_to_erase_settles_at_planning() {
    let env = TestEnv::new().await;
    let bots = platform(&env, 1).await;
    let ctx = Ctx::built_in(env.pool.clone(), env.config());
    let msg = message(&["u-9"], &bots);
    let step = plan::plan(&ctx, &msg).await.unwrap();
    assert!(matches!(step, Step::SettledAtPlanning), "{step:?}");
    assert_eq!(
        env.request_status(msg.request_id.as_str()).await.as_deref(),
        Some("rejected")
    );
}

#[tokio::test]
async fn a_bot_of_another_account_is_refused_at_planning_and_nothing_is_planned() {
    let env = TestEnv::new().await;
    let bots = platform(&env, 1).await;
    let other = env.account("acct-other", 1).await;
    let ctx = Ctx::built_in(env.pool.clone(), env.config());
    let msg = message(&["u-1"], &[bots[0].clone(), BotId::new(&other[0])]);
    match plan::plan(&ctx, &msg).await {
        Err(JobError::Refused(reason)) => {
            assert!(
                reason.contains("not a bot of the request's account"),
                "{reason}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let tasks: i64 = sqlx::query_scalar("SELECT count(*) FROM erasure.tasks")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(tasks, 0, "a refused plan commits nothing");
}

#[tokio::test]
async fn a_task_step_drains_its_bots_counts_each_row_once_and_settles_the_request() {
    let env = TestEnv::new().await;
    let bots = platform(&env, 2).await;
    let ctx = Ctx::built_in(env.pool.clone(), env.config());
    let msg = message(&["u-1", "u-9"], &bots);
    let tasks = queued(&plan::plan(&ctx, &msg).await.unwrap());
    let stop = CancellationToken::new();

    let step = task::run(&ctx, &tasks[0], &stop).await.unwrap();
    assert!(matches!(step, Step::Drained), "{step:?}");
    for bot in &bots {
        assert_eq!(env.count_rows("u-1", bot.as_str()).await, 0);
        assert_eq!(
            env.count_rows("u-2", bot.as_str()).await,
            9,
            "u-2 was not asked for"
        );
    }
    let id = msg.request_id.as_str();
    assert_eq!(env.request_status(id).await.as_deref(), Some("completed"));
    assert_eq!(env.rows_deleted(id).await, 2 * 9);

    let again = task::run(&ctx, &tasks[0], &stop).await.unwrap();
    assert!(
        matches!(again, Step::Drained),
        "a duplicate finds it done: {again:?}"
    );
    assert_eq!(
        env.rows_deleted(id).await,
        2 * 9,
        "and counts nothing twice"
    );
}

#[tokio::test]
async fn a_slice_that_runs_out_continues_in_two_halves_and_its_old_copy_is_stale() {
    let env = TestEnv::with_vars(&[
        ("ERASURE_BATCH_SIZE", "2"),
        ("ERASURE_BATCHES_PER_SLICE", "1"),
    ])
    .await;
    let bots = platform(&env, 4).await;
    let ctx = Ctx::built_in(env.pool.clone(), env.config());
    let msg = message(&["u-1"], &bots);
    let first = queued(&plan::plan(&ctx, &msg).await.unwrap());
    let stop = CancellationToken::new();

    let step = task::run(&ctx, &first[0], &stop).await.unwrap();
    let next = queued(&step);
    assert_eq!(next.len(), 2, "four bots continue as two messages of two");
    assert!(next.iter().all(|m| m.slice == 1 && m.bots().len() == 2));
    let stale = task::run(&ctx, &first[0], &stop).await.unwrap();
    assert!(
        matches!(stale, Step::Stale),
        "slice 0 was handed over: {stale:?}"
    );

    // Working the continuations to the end erases every row, each counted once.
    let mut pending = next;
    while let Some(m) = pending.pop() {
        match task::run(&ctx, &m, &stop).await.unwrap() {
            step @ Step::Continued { .. } => pending.extend(queued(&step)),
            Step::Drained => {}
            other => panic!("a continuation is worked once: {other:?}"),
        }
    }
    for bot in &bots {
        assert_eq!(env.count_rows("u-1", bot.as_str()).await, 0);
    }
    let id = msg.request_id.as_str();
    assert_eq!(env.request_status(id).await.as_deref(), Some("completed"));
    assert_eq!(env.rows_deleted(id).await, 4 * 9);
}

#[tokio::test]
async fn a_task_message_whose_request_was_never_planned_is_an_unknown_task() {
    let env = TestEnv::new().await;
    let ctx = Ctx::built_in(env.pool.clone(), env.config());
    let msg = TaskMessage::new(&RequestId::generate(), &[BotId::new("st-x")], 0);
    let stop = CancellationToken::new();
    assert!(matches!(
        task::run(&ctx, &msg, &stop).await,
        Err(JobError::UnknownTask)
    ));
}

#[tokio::test]
async fn unreadable_messages_are_poison_naming_what_they_can() {
    let env = TestEnv::new().await;
    let ctx = Ctx::built_in(env.pool.clone(), env.config());
    let poison = PlanJob
        .parse(
            &ctx,
            br#"{"version":7,"requestId":"eud-x1","accountId":"acct-j"}"#,
        )
        .unwrap_err();
    assert_eq!(poison.request_id.unwrap().as_str(), "eud-x1");
    assert_eq!(poison.account_id.unwrap().as_str(), "acct-j");
    assert!(
        poison.reason.contains("unknown message version"),
        "{}",
        poison.reason
    );
    let poison = TaskJob.parse(&ctx, b"not json").unwrap_err();
    assert!(poison.request_id.is_none());
    assert!(
        poison.reason.contains("not valid JSON"),
        "{}",
        poison.reason
    );
}

/// Plans several requests as the runner does when their messages are ready together.
async fn plan_together(ctx: &Ctx, msgs: &[EraseMessage]) -> Vec<Result<Step, JobError>> {
    let refs: Vec<&EraseMessage> = msgs.iter().collect();
    PlanJob
        .execute_many(ctx, &refs, &CancellationToken::new())
        .await
}

/// Works several task messages together, as the runner does.
async fn work_together(ctx: &Ctx, msgs: &[TaskMessage]) -> Vec<Result<Step, JobError>> {
    let deliveries: Vec<task::TaskDelivery> = msgs
        .iter()
        .map(|m| task::TaskDelivery {
            message: m.clone(),
            bots: m.bots(),
        })
        .collect();
    let refs: Vec<&task::TaskDelivery> = deliveries.iter().collect();
    TaskJob
        .execute_many(ctx, &refs, &CancellationToken::new())
        .await
}

#[tokio::test]
async fn requests_ready_together_are_planned_together_and_erased_in_shared_statements() {
    // Through task messages: none is erased at planning.
    let env = TestEnv::with_vars(&[("ERASURE_ERASE_AT_PLANNING_USERS", "0")]).await;
    let bots = platform(&env, 3).await;
    more_users(&env, &bots, &["u-3", "u-4"]).await;
    let ctx = Ctx::built_in(env.pool.clone(), env.config());
    let msgs = four_requests(&bots);
    let steps = plan_together(&ctx, &msgs).await;
    let mut tasks = Vec::new();
    for step in &steps {
        tasks.extend(queued(step.as_ref().unwrap()));
    }
    assert_eq!(tasks.len(), 4, "one message per request");
    let outcomes = env.user_outcomes(msgs[1].request_id.as_str()).await;
    assert_eq!(
        outcomes[1].2.as_deref(),
        Some("account_owner"),
        "rules apply per request"
    );

    let steps = work_together(&ctx, &tasks).await;
    assert!(
        steps.iter().all(|s| matches!(s, Ok(Step::Drained))),
        "{steps:?}"
    );
    assert_gone(&env, &bots, &["u-4"]).await;
    // Every row counted once: u-1's by the first of its two requests.
    assert_eq!(completed_rows(&env, &msgs).await, [3 * 9, 3 * 9, 0, 2 * 6]);
}

#[tokio::test]
async fn small_requests_are_erased_by_the_delivery_that_plans_them() {
    let env = TestEnv::new().await;
    let bots = platform(&env, 3).await;
    more_users(&env, &bots, &["u-3"]).await;
    for bot in &bots {
        env.rows("u-9", bot.as_str(), 1).await;
    }
    let ctx = Ctx::built_in(env.pool.clone(), env.config());
    let msgs = four_requests(&bots);
    let steps = plan_together(&ctx, &msgs).await;
    for step in &steps {
        assert!(
            queued(step.as_ref().unwrap()).is_empty(),
            "nothing to publish: {step:?}"
        );
    }
    assert_eq!(
        env.outbox_len().await,
        0,
        "their task messages were cleared"
    );
    assert_gone(&env, &bots, &["u-9"]).await;
    assert_eq!(completed_rows(&env, &msgs).await, [3 * 9, 3 * 9, 0, 2 * 6]);
}

#[tokio::test]
async fn a_group_too_big_for_one_statement_at_planning_is_halved_until_its_parts_fit() {
    let env = TestEnv::with_vars(&[("ERASURE_BATCH_SIZE", "10")]).await;
    let bots = platform(&env, 3).await;
    let ctx = Ctx::built_in(env.pool.clone(), env.config());
    // 9 rows per store each: 18 together, more than one statement's 10; 9 alone.
    let msgs = vec![message(&["u-1"], &bots), message(&["u-2"], &bots)];
    let steps = plan_together(&ctx, &msgs).await;
    let published: Vec<usize> = steps
        .iter()
        .map(|s| queued(s.as_ref().unwrap()).len())
        .collect();
    assert_eq!(published, [0, 0], "both erased at planning");
    assert_eq!(env.outbox_len().await, 0);
    assert_eq!(completed_rows(&env, &msgs).await, [27, 27]);
    for user in ["u-1", "u-2"] {
        for bot in &bots {
            assert_eq!(
                env.count_rows(user, bot.as_str()).await,
                0,
                "{user} in {bot}"
            );
        }
    }
}

#[tokio::test]
async fn requests_too_big_to_erase_at_planning_are_left_to_their_task_messages() {
    // At most one user to erase at planning, and 8 rows per statement.
    let env = TestEnv::with_vars(&[
        ("ERASURE_ERASE_AT_PLANNING_USERS", "1"),
        ("ERASURE_BATCH_SIZE", "8"),
    ])
    .await;
    let bots = platform(&env, 3).await;
    more_users(&env, &bots, &["u-3", "u-4", "u-5"]).await;
    let ctx = Ctx::built_in(env.pool.clone(), env.config());
    let msgs = vec![
        // 9 rows per store each: more than one statement's 8, together and alone.
        message(&["u-1"], &bots),
        message(&["u-2"], &bots),
        // 4 rows per store: erased at planning.
        message(&["u-3"], &bots[..2]),
        // Two users to erase: more than ERASURE_ERASE_AT_PLANNING_USERS.
        message(&["u-4", "u-5"], &bots),
    ];
    let steps = plan_together(&ctx, &msgs).await;
    let published: Vec<Vec<TaskMessage>> =
        steps.iter().map(|s| queued(s.as_ref().unwrap())).collect();
    let counts: Vec<usize> = published.iter().map(Vec::len).collect();
    assert_eq!(counts, [1, 1, 0, 1], "to publish, per request");
    assert_eq!(
        env.outbox_len().await,
        3,
        "what is to publish is in the outbox"
    );
    for (user, left) in [
        ("u-1", 27),
        ("u-2", 27),
        ("u-3", 6),
        ("u-4", 18),
        ("u-5", 18),
    ] {
        let mut n = 0;
        for bot in &bots {
            n += env.count_rows(user, bot.as_str()).await;
        }
        assert_eq!(n, left, "{user}: only u-3's rows are erased at planning");
    }
    assert_eq!(
        env.request_status(msgs[2].request_id.as_str())
            .await
            .as_deref(),
        Some("completed")
    );
    assert_eq!(
        env.request_status(msgs[0].request_id.as_str())
            .await
            .as_deref(),
        Some("in-progress")
    );

    let tasks: Vec<TaskMessage> = published.into_iter().flatten().collect();
    let done = work_together(&ctx, &tasks).await;
    assert!(
        done.iter().all(|s| matches!(s, Ok(Step::Drained))),
        "{done:?}"
    );
    assert_eq!(
        completed_rows(&env, &msgs).await,
        [27, 27, 12, 36],
        "every row counted once"
    );
}

#[tokio::test]
async fn a_store_that_fails_at_planning_leaves_the_request_to_its_task_message_counted_once() {
    let env = TestEnv::new().await;
    let bots = platform(&env, 2).await;
    let ctx = Ctx::built_in(env.pool.clone(), env.config());
    env.refuse_deletes().await;
    let msgs = vec![message(&["u-1"], &bots), message(&["u-2"], &bots)];
    let steps = plan_together(&ctx, &msgs).await;
    let tasks: Vec<TaskMessage> = steps
        .iter()
        .flat_map(|s| queued(s.as_ref().unwrap()))
        .collect();
    assert_eq!(tasks.len(), 2, "both left to their task messages");
    // The other stores were erased (and counted) at planning; conversations refused.
    for user in ["u-1", "u-2"] {
        let mut left = 0;
        for bot in &bots {
            left += env.count_rows(user, bot.as_str()).await;
        }
        assert_eq!(left, 6, "{user}: the conversations are left");
        assert_eq!(
            env.request_status(msgs[0].request_id.as_str())
                .await
                .as_deref(),
            Some("in-progress")
        );
    }
    env.allow_deletes().await;
    let done = work_together(&ctx, &tasks).await;
    assert!(
        done.iter().all(|s| matches!(s, Ok(Step::Drained))),
        "{done:?}"
    );
    assert_eq!(completed_rows(&env, &msgs).await, [3 * 6, 3 * 6]);
}

#[tokio::test]
async fn a_refused_request_in_a_group_is_refused_alone_and_the_others_are_planned() {
    let env = TestEnv::new().await;
    let bots = platform(&env, 1).await;
    let other = env.account("acct-x", 1).await;
    let ctx = Ctx::built_in(env.pool.clone(), env.config());
    let msgs = vec![
        message(&["u-1"], &bots),
        message(&["u-2"], &[BotId::new(&other[0])]),
    ];
    let steps = plan_together(&ctx, &msgs).await;
    assert!(
        matches!(steps[0], Ok(Step::Planned { .. })),
        "{:?}",
        steps[0]
    );
    assert!(
        matches!(&steps[1], Err(JobError::Refused(r)) if r.contains("not a bot of the request's account")),
        "{:?}",
        steps[1]
    );
}
