//! Several `points-server` replicas, real binaries, on one fresh database,
//! and clients that spread their calls over them.

use tonic::transport::{Channel, Endpoint};

use super::ServerProcess;
use super::client::Client;
use super::postgres::TestDatabase;

/// Replicas of the real binary sharing one database of their own.
pub struct Replicas {
    /// Declared before the database, so that servers stop before it is dropped.
    pub servers: Vec<ServerProcess>,
    pub database: TestDatabase,
}

impl Replicas {
    /// `count` replicas on a new database, each started with `args`.
    pub fn start(count: usize, args: &[&str]) -> Self {
        Self::start_on(TestDatabase::create(), count, args)
    }

    /// `count` replicas on `database`, each started with `args`.
    pub fn start_on(database: TestDatabase, count: usize, args: &[&str]) -> Self {
        let servers = (0..count).map(|_| ServerProcess::start_on_database(&database.url, args));
        Self { servers: servers.collect(), database }
    }

    /// A client whose calls are spread over every replica (balanced per call).
    pub async fn client(&self) -> Client {
        Client::new(self.channel())
    }

    /// A channel balancing calls over every replica.
    pub fn channel(&self) -> Channel {
        let endpoints = self.servers.iter().map(|server| {
            Endpoint::from_shared(format!("http://{}", server.address)).expect("a valid URI")
        });
        Channel::balance_list(endpoints)
    }

    /// A client of replica `index` alone.
    pub async fn client_of(&self, index: usize) -> Client {
        self.servers[index].client().await
    }

    /// How many calls of `method` each replica logged, for checking that
    /// calls were spread.
    pub fn calls_logged(&self, method: &str) -> Vec<usize> {
        let needle = format!("method=\"{method}\"");
        let count = |log: String| {
            log.lines().filter(|line| line.contains(&needle) && line.contains("rpc ")).count()
        };
        self.servers.iter().map(|server| count(server.log())).collect()
    }
}
