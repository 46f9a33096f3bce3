//! Replicas of the real binary over one PostgreSQL database: same answers
//! as one server, linearizable per user (a call that starts after another
//! was acknowledged, on any replica, sees it), concurrent writes through
//! different replicas never overdraw or lose an update, a request_id applies
//! once across replicas, migrations do not race, kill -9 of a replica loses
//! nothing acknowledged, and a database that goes away fails calls fast and
//! is served again when it returns.

use crate::common::ServerProcess;
use crate::common::client::{
    Client, add, add_request, balances, balances_of, spend_request, try_add, try_spend,
};
use crate::common::history::entries;
use crate::common::postgres::{Cluster, TestDatabase, execute, query};
use crate::common::refusal::assert_refusal;
use crate::common::replicas::Replicas;
use crate::common::wait::eventually;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use points::proto::v1::GetBalancesRequest;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The balanced client of the behaviour tests really spreads its calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balanced_client_spreads_calls_over_both_replicas() {
    let replicas = Replicas::start(2, &[]);
    let mut client = replicas.client().await;
    for _ in 0..100 {
        client.get_balances(GetBalancesRequest::default()).await.expect("balances");
    }
    // Log lines are written by a thread of their own: wait for all 100.
    let calls = eventually("every call to be logged", Duration::from_secs(10), || {
        let calls = replicas.calls_logged("GetBalances");
        std::future::ready((calls.iter().sum::<usize>() == 100).then_some(calls))
    })
    .await;
    assert!(calls.iter().all(|&count| count > 0), "every replica served: {calls:?}");
}

/// A write acknowledged by one replica is seen at once by the other, for
/// writes and reads alternating between them, hundreds of times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_replica_is_read_at_once_on_the_other() {
    let replicas = Replicas::start(2, &[]);
    let mut clients = [replicas.client_of(0).await, replicas.client_of(1).await];
    let mut expected = 0;
    for round in 0..300 {
        let (writer, reader) = (round % 2, 1 - round % 2);
        let points = 1 + round as i64 % 7;
        let request = add_request("reader", "", "DANNON", points, "2024-01-01T00:00:00Z");
        try_add(&mut clients[writer], request).await.expect("accepted");
        expected += points;
        let seen = balances_of(&mut clients[reader], "reader").await["DANNON"];
        assert_eq!(
            seen, expected,
            "round {round}: replica {reader} missed replica {writer}'s write"
        );
        // A spend decided on the other replica sees the write too.
        if round % 10 == 9 {
            let spent = try_spend(&mut clients[reader], spend_request("reader", "", expected))
                .await
                .expect("everything credited can be spent at once");
            assert_eq!(spent.spent.iter().map(|entry| -entry.points).sum::<i64>(), expected);
            expected = 0;
        }
    }
}

/// The same request_id sent at once through both replicas, many times over,
/// is applied once and every reply is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_applies_once_across_replicas() {
    let replicas = Replicas::start(2, &[]);
    let mut client = replicas.client_of(0).await;
    let credit = add_request("once", "", "DANNON", 1_000, "2024-01-01T00:00:00Z");
    try_add(&mut client, credit).await.expect("accepted");
    let channels = [replicas.servers[0].channel().await, replicas.servers[1].channel().await];
    let tasks: Vec<_> = (0..40)
        .map(|task| {
            let mut client = Client::new(channels[task % 2].clone());
            tokio::spawn(async move {
                let spend = try_spend(&mut client, spend_request("once", "spend-1", 30)).await;
                let credit = add_request("once", "credit-1", "UNILEVER", 5, "2024-01-02T00:00:00Z");
                let credit = try_add(&mut client, credit).await;
                (spend.expect("spend accepted"), credit.expect("credit accepted"))
            })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("task"));
    }
    assert!(replies.windows(2).all(|pair| pair[0] == pair[1]), "every retry got the same reply");
    let balances = balances_of(&mut client, "once").await;
    assert_eq!(balances, HashMap::from([("DANNON".to_owned(), 970), ("UNILEVER".to_owned(), 5)]));
}

/// Many tasks writing one user through both replicas at once: every
/// acknowledged write is there, nothing is lost or applied twice, and no
/// payer goes negative.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_one_user_through_both_replicas_lose_nothing() {
    let replicas = Replicas::start(2, &[]);
    let channels = [replicas.servers[0].channel().await, replicas.servers[1].channel().await];
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let mut client = Client::new(channels[task % 2].clone());
            tokio::spawn(async move {
                let (mut credited, mut spent, mut conflicts) = (0i64, 0i64, 0);
                for round in 0..25 {
                    let day = 1 + (task * 25 + round) % 28;
                    let when = format!("2024-02-{day:02}T00:00:00Z");
                    let request = add_request("hot", "", "DANNON", 10, &when);
                    match try_add(&mut client, request).await {
                        Ok(_) => credited += 10,
                        Err(status) => {
                            assert_refusal(&status, Code::Aborted, "WRITE_CONFLICT");
                            conflicts += 1;
                        }
                    }
                    match try_spend(&mut client, spend_request("hot", "", 7)).await {
                        Ok(reply) => {
                            spent += reply.spent.iter().map(|entry| -entry.points).sum::<i64>()
                        }
                        Err(status) if status.code() == Code::FailedPrecondition => {}
                        Err(status) => {
                            assert_refusal(&status, Code::Aborted, "WRITE_CONFLICT");
                            conflicts += 1;
                        }
                    }
                }
                (credited, spent, conflicts)
            })
        })
        .collect();
    let (mut credited, mut spent, mut conflicts) = (0, 0, 0);
    for task in tasks {
        let (task_credited, task_spent, task_conflicts) = task.await.expect("task");
        credited += task_credited;
        spent += task_spent;
        conflicts += task_conflicts;
    }
    for index in 0..2 {
        let mut client = replicas.client_of(index).await;
        let balance = balances_of(&mut client, "hot").await["DANNON"];
        assert_eq!(
            balance,
            credited - spent,
            "replica {index}: credited {credited}, spent {spent}"
        );
        assert!(balance >= 0);
    }
    // Contention is retried inside the server; giving up is the exception.
    assert!(conflicts <= 4, "{conflicts} calls gave up on contention");
}

/// Replicas started at the same moment on an empty database migrate it
/// once, without racing, and all serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_at_once_migrate_the_schema_once() {
    let database = TestDatabase::create();
    let commands: Vec<_> = (0..4).map(|_| ServerProcess::on_database(&database.url, &[])).collect();
    let starting: Vec<_> = commands
        .into_iter()
        .map(|command| std::thread::spawn(|| ServerProcess::spawn(command)))
        .collect();
    let servers: Vec<ServerProcess> =
        starting.into_iter().map(|thread| thread.join().expect("a replica started")).collect();
    let migrations =
        query(&database.url, "SELECT version FROM points_schema_migrations ORDER BY version");
    assert_eq!(migrations, vec![vec![Some("1".to_owned())], vec![Some("2".to_owned())]]);
    for server in &servers {
        let mut client = server.client().await;
        add(&mut client, "DANNON", 1, "2024-01-01T00:00:00Z").await;
    }
    let mut client = servers[0].client().await;
    assert_eq!(balances(&mut client).await["DANNON"], 4);
}

/// A replica killed with -9 in the middle of writes loses nothing it
/// acknowledged: the other replica, and a new one, see every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_with_9_loses_nothing_acknowledged() {
    let mut replicas = Replicas::start(2, &[]);
    let victim = replicas.servers[0].channel().await;
    let writer = tokio::spawn(async move {
        let mut client = Client::new(victim);
        let mut acknowledged = 0i64;
        for round in 0..100_000 {
            let request = add_request("", "", "DANNON", 1, "2024-01-01T00:00:00Z");
            match try_add(&mut client, request).await {
                Ok(_) => acknowledged += 1,
                Err(_) => return (acknowledged, round),
            }
        }
        (acknowledged, 100_000)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    replicas.servers[0].signal("KILL");
    let (acknowledged, sent) = writer.await.expect("writer");
    assert!(acknowledged > 0 && sent < 100_000, "killed mid-writes");
    let mut survivor = replicas.client_of(1).await;
    let balance = balances(&mut survivor).await["DANNON"];
    // The call cut by the kill may or may not have been stored.
    assert!(
        balance == acknowledged || balance == acknowledged + 1,
        "acknowledged {acknowledged}, stored {balance}"
    );
    let fresh = ServerProcess::start_on_database(&replicas.database.url, &[]);
    let mut client = fresh.client().await;
    assert_eq!(balances(&mut client).await["DANNON"], balance);
    replicas.servers.push(fresh);
}

/// Waits until the server's health check answers `status`.
async fn health_becomes(health: &HealthClient<Channel>, status: ServingStatus, timeout: Duration) {
    eventually(&format!("health to be {}", status.as_str_name()), timeout, || {
        let mut health = health.clone();
        async move {
            let reply = health.check(HealthCheckRequest::default()).await.ok()?.into_inner();
            (reply.status == status as i32).then_some(())
        }
    })
    .await;
}

/// With the database stopped, calls fail fast with UNAVAILABLE and health
/// is NOT_SERVING; when it is back, the replica serves again by itself and
/// everything acknowledged before is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_calls_fast_and_the_replica_recovers_by_itself() {
    let cluster = Cluster::start();
    let database = TestDatabase::create_on(&cluster.admin_url());
    let replicas = Replicas::start_on(database, 1, &["--database-connect-timeout-ms", "500"]);
    let mut client = replicas.client_of(0).await;
    let mut health = HealthClient::new(replicas.servers[0].channel().await);
    add(&mut client, "DANNON", 100, "2024-01-01T00:00:00Z").await;

    cluster.stop();
    health_becomes(&health, ServingStatus::NotServing, Duration::from_secs(10)).await;
    for call in 0..3 {
        let started = Instant::now();
        let request = add_request("", "", "DANNON", 1, "2024-01-02T00:00:00Z");
        let status = try_add(&mut client, request).await.expect_err("the database is down");
        assert_refusal(&status, Code::Unavailable, "STORE_UNAVAILABLE");
        let status = client.get_balances(GetBalancesRequest::default()).await.expect_err("down");
        assert_eq!(status.code(), Code::Unavailable, "call {call}: {status:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "call {call} failed fast");
    }

    cluster.restart();
    health_becomes(&health, ServingStatus::Serving, Duration::from_secs(20)).await;
    eventually("writes to be accepted again", Duration::from_secs(20), || {
        let mut client = client.clone();
        async move {
            let request = add_request("", "", "DANNON", 1, "2024-01-03T00:00:00Z");
            try_add(&mut client, request).await.ok()
        }
    })
    .await;
    assert_eq!(balances(&mut client).await["DANNON"], 101);
    health.check(HealthCheckRequest::default()).await.expect("health answers");
}

/// A replica keeps at most --database-cache-users users in memory: users
/// dropped from memory are loaded again on use, with everything they had,
/// also while the other replica writes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_beyond_the_cache_bound_are_dropped_and_loaded_again_intact() {
    let replicas = Replicas::start(2, &["--database-cache-users", "10"]);
    let mut clients = [replicas.client_of(0).await, replicas.client_of(1).await];
    for round in 0..3 {
        for user in 0..60 {
            let user_id = format!("user-{user}");
            let request = add_request(&user_id, "", "DANNON", user + 1, "2024-01-01T00:00:00Z");
            try_add(&mut clients[(round + user as usize) % 2], request).await.expect("accepted");
        }
    }
    for user in 0..60 {
        for client in &mut clients {
            let seen = balances_of(client, &format!("user-{user}")).await["DANNON"];
            assert_eq!(seen, 3 * (user + 1), "user-{user}");
        }
    }
    for server in &replicas.servers {
        eventually("the replica to log dropping users", Duration::from_secs(10), || {
            std::future::ready(
                server.log().contains("dropped idle users from memory").then_some(()),
            )
        })
        .await;
    }
}

/// A user with a long history gets a snapshot in the database, and a new
/// replica loads them from it (the chunks it covers are not even read: they
/// are deleted here) with the same balances, history and remembered
/// request ids; a damaged snapshot is never served: the user's chunks
/// replace it, and without them the user is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_a_long_history_is_loaded_from_their_snapshot() {
    let replicas = Replicas::start(1, &[]);
    let mut client = replicas.client_of(0).await;
    let mut first_spend = None;
    for round in 0..700 {
        let day = 1 + round % 28;
        let request = add_request("long", "", "DANNON", 10, &format!("2024-03-{day:02}T00:00:00Z"));
        try_add(&mut client, request).await.expect("accepted");
        if round % 50 == 49 {
            let request_id = format!("spend-{round}");
            let spent = try_spend(&mut client, spend_request("long", &request_id, 25)).await;
            first_spend.get_or_insert((request_id, spent.expect("spent")));
        }
    }
    let url = replicas.database.url.clone();
    let snapshot_seq = eventually("a snapshot to be stored", Duration::from_secs(20), || {
        let rows = query(&url, "SELECT seq FROM points_user_snapshots WHERE user_id = 'long'");
        let seq = rows.first().and_then(|row| row[0].as_deref()?.parse::<i64>().ok());
        std::future::ready(seq.filter(|&seq| seq >= 256))
    })
    .await;
    let balances_before = balances_of(&mut client, "long").await;
    let history_before = entries(&mut client, "long").await;
    assert_eq!(history_before.len(), 714);

    let covered =
        format!("DELETE FROM points_user_records WHERE user_id = 'long' AND seq <= {snapshot_seq}");
    execute(&url, &covered).expect("delete the chunks the snapshot covers");
    let fresh = ServerProcess::start_on_database(&url, &[]);
    let mut fresh_client = fresh.client().await;
    assert_eq!(balances_of(&mut fresh_client, "long").await, balances_before);
    assert_eq!(entries(&mut fresh_client, "long").await, history_before);
    let (request_id, reply) = first_spend.expect("spent");
    let retried = try_spend(&mut fresh_client, spend_request("long", &request_id, 25)).await;
    assert_eq!(retried.expect("the retry is answered"), reply, "the request id is remembered");
    let request = add_request("long", "", "UNILEVER", 5, "2024-04-01T00:00:00Z");
    try_add(&mut fresh_client, request).await.expect("the loaded user takes writes");

    // A damaged snapshot is never served: the user is loaded from their
    // chunks instead, and refused only when those are gone too.
    for round in 0..300 {
        let request = add_request("spare", "", "DANNON", 1 + round, "2024-03-01T00:00:00Z");
        try_add(&mut client, request).await.expect("accepted");
    }
    eventually("a snapshot of the second user", Duration::from_secs(20), || {
        let rows = query(&url, "SELECT seq FROM points_user_snapshots WHERE user_id = 'spare'");
        std::future::ready((!rows.is_empty()).then_some(()))
    })
    .await;
    let spare_balances = balances_of(&mut client, "spare").await;
    execute(&url, "UPDATE points_user_snapshots SET state = '\\x0102'").expect("damage them");
    let another = ServerProcess::start_on_database(&url, &[]);
    let mut another_client = another.client().await;
    assert_eq!(balances_of(&mut another_client, "spare").await, spare_balances);
    // The log is read from the process's stderr by another thread: the
    // line may reach it just after the reply does.
    eventually("the damaged snapshot logged", Duration::from_secs(5), || {
        let logged = another.log().contains("loading the user from all their chunks");
        std::future::ready(logged.then_some(()))
    })
    .await;
    let request = GetBalancesRequest { user_id: "long".to_owned(), ..Default::default() };
    let status = another_client.get_balances(request).await.expect_err("damaged");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("snapshot is damaged"), "{status:?}");
    assert!(status.message().contains("the chunks cannot replace it"), "{status:?}");
}

/// A snapshot the database refuses is not tried again at every write (each
/// try encodes the user's whole ledger): the next is due after twice as
/// many chunks, and writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_the_database_refuses_is_retried_rarely() {
    let replicas = Replicas::start(1, &[]);
    let url = replicas.database.url.clone();
    execute(
        &url,
        "CREATE FUNCTION refuse_snapshots() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'snapshots refused by the test'; END $$; \
         CREATE TRIGGER refuse_snapshots BEFORE INSERT OR UPDATE ON points_user_snapshots \
         FOR EACH ROW EXECUTE FUNCTION refuse_snapshots();",
    )
    .expect("install the trigger");
    let mut client = replicas.client_of(0).await;
    for round in 0..1000 {
        let request = add_request("refused", "", "DANNON", 1 + round, "2024-03-01T00:00:00Z");
        try_add(&mut client, request).await.expect("writes go on");
    }
    let server = &replicas.servers[0];
    let failures = eventually("a refused snapshot to be logged", Duration::from_secs(10), || {
        let failures = server.log().matches("cannot store a snapshot").count();
        std::future::ready((failures > 0).then_some(failures))
    })
    .await;
    // Due at 256 chunks, then 512 after that, then 1024 after that.
    assert!(failures <= 2, "{failures} snapshot attempts for 1,000 writes");
}
