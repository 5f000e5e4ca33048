//! Test harness for real worker processes: writes a job, starts and SIGKILLs `sluice-worker run`
//! processes, reads topics back, and reads tasks' committed state from the checkpoint store
//! without taking the tasks over. Process, Kafka and object-store I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_worker::checkpoint::descriptor::{CheckpointId, Descriptor, Head};
use sluice_worker::checkpoint::layout::{FileKind, JobLayout};
use sluice_worker::checkpoint::store::{CheckpointStore, StoreOptions};
use sluice_worker::state::StateBackend;
use sluice_worker::state::rocks::RocksState;

use crate::{TestEnv, cdc};

/// A small deterministic random source (xorshift), seeded and printed so a run can be replayed.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `SLUICE_TEST_SEED`, or the clock.
    pub fn from_env() -> Self {
        let seed = std::env::var("SLUICE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("random seed: SLUICE_TEST_SEED={seed}");
        Self(seed | 1)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A fresh directory under the system temp dir, kept after the test for its logs.
pub fn scratch_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(crate::unique_name(prefix));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// One test's job and its input: a scratch directory, topics `<name>.in` / `<name>.out`, a
/// materialize job over them, and the CDC workload being written into the input.
pub struct Scenario {
    /// The test servers.
    pub env: TestEnv,
    /// Scratch directory: job manifest, worker volumes and logs.
    pub dir: PathBuf,
    /// The input topic.
    pub input: String,
    /// The output (changelog) topic.
    pub output: String,
    /// The job manifest.
    pub job: JobFiles,
    /// The generator writing the input; see [`Scenario::input_written`].
    pub generator: Child,
    /// (partitions, keys, events) of the input.
    workload: (u32, u64, u64),
}

impl Scenario {
    /// Worker processes of the job, `binary` being the test's `CARGO_BIN_EXE_sluice-worker`.
    pub fn workers(&self, binary: &str, parallelism: u32) -> Workers {
        Workers::new(binary.as_ref(), &self.job, &self.dir, parallelism)
    }

    /// The job's consumer group, `sluice-<namespace>-<job>`.
    pub fn group(&self) -> String {
        format!("sluice-{}-{}", self.job.namespace, self.job.name)
    }

    /// Writes a materialize job (`prefix`-named, checkpoint `interval`, `guarantee`) and starts
    /// writing `workload` (partitions, keys, events) into its input at `rate` events/s (or as
    /// fast as the broker takes it); `generator` is the test's `CARGO_BIN_EXE_sluice-cdc-gen`.
    pub fn start(
        prefix: &str,
        interval: &str,
        guarantee: &str,
        generator: &str,
        workload: (u32, u64, u64),
        rate: Option<u32>,
    ) -> Self {
        Self::start_on(
            crate::Store::S3,
            prefix,
            interval,
            guarantee,
            generator,
            workload,
            rate,
        )
    }

    /// As [`Scenario::start`], checkpointing to `store`.
    pub fn start_on(
        store: crate::Store,
        prefix: &str,
        interval: &str,
        guarantee: &str,
        generator: &str,
        workload: (u32, u64, u64),
        rate: Option<u32>,
    ) -> Self {
        let env = TestEnv::from_env();
        let dir = scratch_dir(prefix);
        let name = crate::unique_name(prefix);
        let (input, output) = (format!("{name}.in"), format!("{name}.out"));
        let job = write_materialize_job_on(
            &env, store, &dir, &name, &input, &output, interval, guarantee,
        );
        let generator = start_input(generator, &env, &input, workload, rate);
        Self {
            env,
            dir,
            input,
            output,
            job,
            generator,
            workload,
        }
    }

    /// Waits until the generator has written the whole input.
    pub fn input_written(&mut self) {
        let status = self.generator.wait().expect("wait for sluice-cdc-gen");
        assert!(status.success(), "sluice-cdc-gen failed: {status}");
    }

    /// Records of the input per partition (its end offsets): the broker's high watermark is
    /// not trusted (see [`read_table`]).
    pub fn ends(&self) -> Vec<i64> {
        let (partitions, keys, events) = self.workload;
        cdc::events_per_partition(events, keys, partitions)
    }

    /// The job's checkpoints.
    pub fn checkpoints(&self) -> Checkpoints {
        Checkpoints::of(&self.env, &self.job)
    }

    /// Asserts the changelog and every task's state equal the reference computed from the
    /// input (see [`Checkpoints::assert_materialized`]); returns the live rows.
    pub async fn assert_materialized(&self, checkpoints: &Checkpoints) -> usize {
        checkpoints
            .assert_materialized(
                &self.env,
                &self.input,
                &self.output,
                &self.ends(),
                &self.dir,
            )
            .await
    }
}

/// Starts the CDC workload generator (`binary`, the test's `CARGO_BIN_EXE_sluice-cdc-gen`)
/// writing the first `events` events over `keys` keys into the `partitions` partitions of
/// `topic`, at most `rate` events per second when given, while the test goes on; returns once
/// the topic exists.
pub fn start_input(
    binary: &str,
    env: &TestEnv,
    topic: &str,
    (partitions, keys, events): (u32, u64, u64),
    rate: Option<u32>,
) -> Child {
    let mut command = Command::new(binary);
    command
        .args(["--bootstrap", &env.kafka_bootstrap, "--topic", topic])
        .args(["--partitions", &partitions.to_string()])
        .args(["--keys", &keys.to_string(), "--events", &events.to_string()]);
    if let Some(rate) = rate {
        command.args(["--rate", &rate.to_string()]);
    }
    let child = command.spawn().expect("start sluice-cdc-gen");
    wait_for_topic(env, topic, partitions);
    child
}

/// Waits until `topic` exists with `partitions` partitions.
pub fn wait_for_topic(env: &TestEnv, topic: &str, partitions: u32) {
    let consumer: BaseConsumer = env.kafka_config().create().expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()
            .and_then(|m| {
                let t = m.topics().first()?;
                Some(t.error().is_none() && t.partitions().len() == partitions as usize)
            })
            .unwrap_or(false);
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "topic {topic} never appeared");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A CDC materialize job over `input`, writing `output` with `deliveryGuarantee` `guarantee`,
/// checkpointing to the S3 server.
pub struct JobFiles {
    /// The job manifest.
    pub manifest: PathBuf,
    /// Namespace and name.
    pub namespace: String,
    /// Job name.
    pub name: String,
    /// `s3://bucket/prefix`.
    pub storage: String,
}

/// Writes a materialize job manifest into `dir`.
pub fn write_materialize_job(
    env: &TestEnv,
    dir: &Path,
    name: &str,
    input: &str,
    output: &str,
    interval: &str,
    guarantee: &str,
) -> JobFiles {
    write_materialize_job_on(
        env,
        crate::Store::S3,
        dir,
        name,
        input,
        output,
        interval,
        guarantee,
    )
}

/// As [`write_materialize_job`], checkpointing to `store`.
#[allow(clippy::too_many_arguments)]
pub fn write_materialize_job_on(
    env: &TestEnv,
    store: crate::Store,
    dir: &Path,
    name: &str,
    input: &str,
    output: &str,
    interval: &str,
    guarantee: &str,
) -> JobFiles {
    let (storage, endpoint) = env.storage(store, name);
    let manifest = dir.join("job.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: sluice.dev/v1alpha1
kind: StreamJob
metadata: {{name: {name}, namespace: e2e}}
spec:
  parallelism: 3
  source:
    kafka: {{bootstrapServers: "{bootstrap}", topics: ["{input}"], format: debezium-json}}
  steps:
    - name: table
      materialize: {{}}
  sink:
    kafka: {{topic: "{output}", deliveryGuarantee: {guarantee}}}
  checkpoint:
    storage: "{storage}"
    endpoint: "{endpoint}"
    interval: {interval}
    retain: {retain}
"#,
            bootstrap = env.kafka_bootstrap,
            // Exactly-once tests walk every task's chain of committed checkpoints to tell
            // committed output from aborted (see `CommittedTransactions`): keep them all.
            retain = if guarantee == "exactly-once" { 100 } else { 3 },
        ),
    )
    .expect("write job manifest");
    JobFiles {
        manifest,
        namespace: "e2e".into(),
        name: name.into(),
        storage,
    }
}

/// Worker processes of one job, each with its own state directory (its "volume").
pub struct Workers {
    binary: PathBuf,
    manifest: PathBuf,
    dir: PathBuf,
    parallelism: u32,
    children: HashMap<u32, Child>,
    starts: u32,
}

impl Workers {
    /// Workers of `job` running `binary`, with volumes and logs under `dir`.
    pub fn new(binary: &Path, job: &JobFiles, dir: &Path, parallelism: u32) -> Self {
        Self {
            binary: crate::worker_binary(binary),
            manifest: job.manifest.clone(),
            dir: dir.to_path_buf(),
            parallelism,
            children: HashMap::new(),
            starts: 0,
        }
    }

    /// The volume of worker `ordinal`.
    pub fn volume(&self, ordinal: u32) -> PathBuf {
        self.dir.join(format!("worker-{ordinal}"))
    }

    /// Starts worker `ordinal` (its volume is kept across restarts).
    pub fn start(&mut self, ordinal: u32) {
        self.start_with_env(ordinal, &[]);
    }

    /// Starts worker `ordinal` with extra environment, e.g. a `SLUICE_FAILPOINT`.
    pub fn start_with_env(&mut self, ordinal: u32, env: &[(&str, &str)]) {
        self.starts += 1;
        let log = self.dir.join(format!("worker-{ordinal}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open worker log");
        let child = Command::new(&self.binary)
            .args(["run", "--http-addr", "127.0.0.1:0"])
            .arg("--job")
            .arg(&self.manifest)
            .arg("--ordinal")
            .arg(ordinal.to_string())
            .arg("--parallelism")
            .arg(self.parallelism.to_string())
            .arg("--state-dir")
            .arg(self.volume(ordinal))
            .env("HOSTNAME", format!("worker-{ordinal}-start{}", self.starts))
            .env("RUST_LOG", "info,rdkafka=warn")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .expect("start sluice-worker");
        self.children.insert(ordinal, child);
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to worker `ordinal`.
    pub fn signal(&self, ordinal: u32, signal: &str) {
        let child = self.children.get(&ordinal).expect("worker was started");
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{signal} worker {ordinal}");
    }

    /// SIGKILLs worker `ordinal` and reaps it.
    pub fn kill(&mut self, ordinal: u32) {
        if let Some(mut child) = self.children.remove(&ordinal) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs every worker (final checkpoints) and waits for them to exit.
    pub fn stop_all(&mut self) {
        for child in self.children.values() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let children: Vec<_> = self.children.drain().collect();
        for (ordinal, mut child) in children {
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        assert!(
                            status.success(),
                            "worker {ordinal} exited with {status}; its log ends:\n{}",
                            self.log_tail(ordinal)
                        );
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(100))
                    }
                    _ => {
                        let _ = child.kill();
                        panic!("worker {ordinal} did not stop within 60 s of SIGTERM");
                    }
                }
            }
        }
    }

    /// Number of workers.
    pub fn parallelism(&self) -> u32 {
        self.parallelism
    }

    /// Rescales to `to` workers as the operator rolls a StatefulSet with `OnDelete`: every
    /// running worker gets SIGTERM (final checkpoints); ordinals new to the set start at once
    /// with the new parallelism, overlapping the old workers, so fencing decides who owns a
    /// task; an ordinal that stays restarts with the new parallelism once its old process has
    /// exited (a pod name exists once). Returns how long the old workers took to stop.
    pub fn rescale(&mut self, to: u32) -> Duration {
        let from = self.parallelism;
        for child in self.children.values() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        self.parallelism = to;
        for ordinal in from..to {
            self.start(ordinal);
        }
        let started = Instant::now();
        let mut old: Vec<u32> = self
            .children
            .keys()
            .copied()
            .filter(|o| *o < from)
            .collect();
        old.sort_unstable();
        for ordinal in old {
            let status = self.wait_for_exit(ordinal, Duration::from_secs(60));
            assert!(
                status.success(),
                "worker {ordinal} exited with {status}; its log ends:\n{}",
                self.log_tail(ordinal)
            );
            if ordinal < to {
                self.start(ordinal);
            }
        }
        started.elapsed()
    }

    /// The log of worker `ordinal`, across its restarts.
    pub fn log(&self, ordinal: u32) -> String {
        std::fs::read_to_string(self.dir.join(format!("worker-{ordinal}.log"))).unwrap_or_default()
    }

    /// Starts worker `ordinal` and waits (up to a minute) until its task refuses its
    /// checkpoint ("would lose state") once more than the log said before, then a few seconds
    /// more, long enough for a retry to show; returns the log, which the caller checks.
    pub fn start_until_refused(&mut self, ordinal: u32) -> String {
        let refusals = |log: String| log.matches("would lose state").count();
        let earlier = refusals(self.log(ordinal));
        self.start(ordinal);
        let deadline = Instant::now() + Duration::from_secs(60);
        while refusals(self.log(ordinal)) == earlier {
            assert!(
                Instant::now() < deadline,
                "no refusal:\n{}",
                self.log_tail(ordinal)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(3));
        let log = self.log(ordinal);
        assert_eq!(
            refusals(log.clone()),
            earlier + 1,
            "refused once, not retried in a loop:\n{log}"
        );
        assert!(
            log.contains("stays stopped until the job is changed"),
            "not stopped for good: {log}"
        );
        log
    }

    /// The last 30 lines of worker `ordinal`'s log, for failure messages.
    pub fn log_tail(&self, ordinal: u32) -> String {
        let log = self.log(ordinal);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Starts worker `ordinal` with the failpoint `failpoint` armed (see `sluice_worker::failpoint`)
    /// and waits until it aborts there; returns its log.
    pub fn crash_at(&mut self, ordinal: u32, failpoint: &str) -> String {
        self.start_with_env(ordinal, &[("SLUICE_FAILPOINT", failpoint)]);
        let status = self.wait_for_exit(ordinal, Duration::from_secs(120));
        let log = self.log(ordinal);
        let name = failpoint.split(':').next().unwrap_or(failpoint);
        assert!(
            !status.success() && log.contains(&format!("failpoint {name} reached")),
            "the failpoint {failpoint} aborts worker {ordinal}, got {status}:\n{log}"
        );
        log
    }

    /// Waits until worker `ordinal` exits by itself and returns how.
    pub fn wait_for_exit(&mut self, ordinal: u32, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.children.get_mut(&ordinal).expect("worker was started");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.children.remove(&ordinal);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker {ordinal} still runs after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Exits of workers that died on their own (not killed by the test), as (ordinal, status).
    pub fn crashed(&mut self) -> Vec<(u32, std::process::ExitStatus)> {
        self.children
            .iter_mut()
            .filter_map(|(o, c)| c.try_wait().ok().flatten().map(|s| (*o, s)))
            .collect()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The latest value per key of a topic (a tombstone reads as `None`), per partition, and the
/// end offset of each partition.
pub type Table = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A `read_committed` consumer of every partition of `topic` from the beginning, as a
/// downstream consumer of exactly-once output reads it.
fn reader(env: &TestEnv, topic: &str, partitions: u32) -> BaseConsumer {
    let consumer: BaseConsumer = env
        .kafka_config()
        .set("group.id", crate::unique_name("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p as i32, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}

/// The `sluice.source` headers (`topic/partition/offset` of the input record) of an output
/// topic's records.
pub struct Sources {
    /// Per output partition: records, and records whose source an earlier record already
    /// named, i.e. results written twice.
    pub counts: Vec<(u64, u64)>,
    /// Every source named.
    pub seen: HashSet<Vec<u8>>,
}

impl Sources {
    /// Input records of `input` (offsets `0..ends[p]` of partition `p`) whose source no
    /// output record names: inputs whose effect never reached the output.
    pub fn missing(&self, input: &str, ends: &[i64]) -> Vec<String> {
        let (mut missing, mut source) = (Vec::new(), String::new());
        for (partition, end) in (0..).zip(ends) {
            for offset in 0..*end {
                sluice_worker::task::source_header(&mut source, input, partition, offset);
                if !self.seen.contains(source.as_bytes()) {
                    missing.push(source.clone());
                }
            }
        }
        missing
    }
}

/// Reads every record of the output `topic` until none arrived for five seconds, and collects
/// their sources.
pub fn sources(env: &TestEnv, topic: &str, partitions: u32) -> Sources {
    sources_where(env, topic, partitions, None)
}

/// [`sources`] of only the records `committed` holds.
pub fn sources_where(
    env: &TestEnv,
    topic: &str,
    partitions: u32,
    committed: Option<&CommittedTransactions>,
) -> Sources {
    use rdkafka::message::Headers;
    let consumer = reader(env, topic, partitions);
    let mut seen = HashSet::new();
    let mut counts = vec![(0u64, 0u64); partitions as usize];
    let mut last_record = Instant::now();
    while last_record.elapsed() < Duration::from_secs(5) {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("fetch");
        last_record = Instant::now();
        if committed.is_some_and(|c| !c.holds(&message)) {
            continue;
        }
        let source = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "sluice.source"))
            .and_then(|h| h.value)
            .expect("every output record names its source")
            .to_vec();
        let count = &mut counts[message.partition() as usize];
        count.0 += 1;
        if !seen.insert(source) {
            count.1 += 1;
        }
    }
    Sources { counts, seen }
}

/// Per partition of the output `topic`: records, and results written twice (see [`Sources`]).
pub fn source_duplicates(env: &TestEnv, topic: &str, partitions: u32) -> Vec<(u64, u64)> {
    sources(env, topic, partitions).counts
}

/// The source offsets (next offset per topic) consumer group `group` has committed for
/// partition `partition` of `topics`.
pub fn group_offsets(
    env: &TestEnv,
    group: &str,
    topics: &[&str],
    partition: u32,
) -> BTreeMap<String, i64> {
    let consumer: BaseConsumer = env
        .kafka_config()
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for topic in topics {
        list.add_partition(topic, partition as i32);
    }
    consumer
        .committed_offsets(list, Duration::from_secs(30))
        .expect("committed offsets")
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(next) => Some((e.topic().to_string(), next)),
            _ => None,
        })
        .collect()
}

/// Reads a whole topic and folds it into the latest value per key, one table per partition.
///
/// Tansu's ListOffsets answers a high watermark below the last record (about one producer batch
/// short), so the end of a topic is never taken from it: with `expected` counts per partition the
/// read stops there; without, it stops once no record arrived for five seconds (use it only when
/// nothing writes the topic any more).
pub fn read_table(
    env: &TestEnv,
    topic: &str,
    partitions: u32,
    expected: Option<&[i64]>,
) -> Vec<Table> {
    read_table_where(env, topic, partitions, expected, None)
}

/// [`read_table`] of only the records `committed` holds (records without a `sluice.txn`
/// header, written outside transactions, are all kept).
pub fn read_table_where(
    env: &TestEnv,
    topic: &str,
    partitions: u32,
    expected: Option<&[i64]>,
    committed: Option<&CommittedTransactions>,
) -> Vec<Table> {
    let consumer = reader(env, topic, partitions);
    let mut tables = vec![Table::new(); partitions as usize];
    let mut positions = vec![0i64; partitions as usize];
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last_record = Instant::now();
    loop {
        let done = match expected {
            Some(ends) => positions.iter().zip(ends).all(|(p, e)| p >= e),
            None => last_record.elapsed() > Duration::from_secs(5),
        };
        if done {
            return tables;
        }
        assert!(
            Instant::now() < deadline,
            "reading {topic} timed out at {positions:?} of {expected:?}"
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("fetch");
        last_record = Instant::now();
        let p = message.partition() as usize;
        positions[p] = message.offset() + 1;
        if committed.is_some_and(|c| !c.holds(&message)) {
            continue;
        }
        let key = message.key().expect("keyed records").to_vec();
        tables[p].insert(key, message.payload().map(<[u8]>::to_vec));
    }
}

/// The transactions of an exactly-once job that committed, for reading its output as a
/// broker that hides aborted transactions would show it (Tansu shows `read_committed`
/// consumers every record). Each record a task writes in a transaction carries the header
/// `sluice.txn = <task>/<epoch>/<checkpoint>`; the transaction committed exactly when that
/// checkpoint is in the task's chain of committed checkpoints: HEAD, and each one's
/// `previous` back to the task's first (an adopted checkpoint is in it once HEAD names it).
/// An aborted transaction's checkpoint never becomes HEAD, so it is in no chain.
#[derive(Debug)]
pub struct CommittedTransactions {
    /// Per task: the labels of its committed checkpoints.
    labels: Vec<HashSet<String>>,
}

impl CommittedTransactions {
    /// Whether `message` was written outside transactions or in a committed one.
    pub fn holds(&self, message: &rdkafka::message::BorrowedMessage<'_>) -> bool {
        use rdkafka::message::Headers;
        let Some(label) = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "sluice.txn"))
            .and_then(|h| h.value)
        else {
            return true;
        };
        let label = String::from_utf8_lossy(label);
        let task: usize = label
            .split('/')
            .next()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("a sluice.txn header names its task: {label}"));
        self.labels
            .get(task)
            .is_some_and(|labels| labels.contains(label.as_ref()))
    }
}

/// Reads the committed checkpoint of every task without taking any over.
pub struct Checkpoints {
    store: CheckpointStore,
    layout: JobLayout,
}

impl Checkpoints {
    /// The checkpoints of `job`.
    pub fn of(env: &TestEnv, job: &JobFiles) -> Self {
        let options = StoreOptions {
            endpoint: Some(env.endpoint_of(&job.storage)),
            region: None,
            ..Default::default()
        };
        let store = CheckpointStore::open(&job.storage, &options).expect("checkpoint store");
        let layout = JobLayout::new(store.prefix(), &job.namespace, &job.name);
        Self { store, layout }
    }

    /// The store, for tests that write checkpoints of their own.
    pub fn store(&self) -> &CheckpointStore {
        &self.store
    }

    /// The job's layout in the store.
    pub fn layout(&self) -> &JobLayout {
        &self.layout
    }

    /// `task`'s HEAD itself (owner, epoch, rollout), if it has one.
    pub async fn head_record(&self, task: u32) -> Option<Head> {
        let (head, _) = self
            .store
            .read_head(&self.layout.task(task))
            .await
            .expect("read HEAD")?;
        Some(head)
    }

    /// HEAD's descriptor of `task`, if it has one.
    pub async fn head(&self, task: u32) -> Option<Descriptor> {
        let t = self.layout.task(task);
        let (head, _) = self.store.read_head(&t).await.expect("read HEAD")?;
        let id = head.checkpoint?;
        Some(
            self.store
                .read_descriptor(&t, id)
                .await
                .expect("read descriptor"),
        )
    }

    /// The chain of `task`'s committed checkpoints, newest first: HEAD's, then each one's
    /// `previous`, back to the task's first. Panics when a link is missing: exactly-once
    /// tests keep every checkpoint (`retain` above their count) so the chain can be walked.
    pub async fn chain(&self, task: u32) -> Vec<Descriptor> {
        self.try_chain(task).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Checkpoints::chain`], or what link is missing (retention deleted it).
    async fn try_chain(&self, task: u32) -> Result<Vec<Descriptor>, String> {
        let mut chain = Vec::new();
        let mut next = self.head(task).await;
        while let Some(descriptor) = next {
            next = match descriptor.previous {
                Some(id) => Some(
                    self.store
                        .read_descriptor(&self.layout.task(task), id)
                        .await
                        .map_err(|e| {
                            format!(
                                "task {task}: checkpoint {id}, before {}, is gone ({e}): keep \
                                 every checkpoint in exactly-once tests",
                                descriptor.id
                            )
                        })?,
                ),
                None => None,
            };
            chain.push(descriptor);
        }
        Ok(chain)
    }

    /// The committed transactions of every task (see [`CommittedTransactions`]), after
    /// checking each task's chain: every link moves the offsets forward or keeps them, so
    /// every input offset up to HEAD's is covered by exactly one committed checkpoint.
    pub async fn committed_transactions(&self, partitions: u32) -> CommittedTransactions {
        self.try_committed_transactions(partitions)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Checkpoints::committed_transactions`], or why the chains cannot be walked.
    async fn try_committed_transactions(
        &self,
        partitions: u32,
    ) -> Result<CommittedTransactions, String> {
        let mut labels = Vec::new();
        for task in 0..partitions {
            let chain = self.try_chain(task).await?;
            for pair in chain.windows(2) {
                let (newer, older) = (&pair[0], &pair[1]);
                for (topic, next) in &older.source_offsets {
                    assert!(
                        newer.source_offsets.get(topic).is_some_and(|n| n >= next),
                        "task {task}: checkpoint {} goes back from {}'s offsets {:?} to {:?}",
                        newer.id,
                        older.id,
                        older.source_offsets,
                        newer.source_offsets
                    );
                }
            }
            labels.push(
                chain
                    .iter()
                    .map(|d| format!("{task}/{}/{}", d.epoch, d.id))
                    .collect(),
            );
        }
        Ok(CommittedTransactions { labels })
    }

    /// Descriptor `id` of `task`.
    pub async fn descriptor(&self, task: u32, id: u64) -> Descriptor {
        self.store
            .read_descriptor(&self.layout.task(task), CheckpointId(id))
            .await
            .expect("read descriptor")
    }

    /// Content hashes of the state files of `task` in the store.
    pub async fn file_hashes(&self, task: u32) -> Vec<String> {
        let files = self
            .store
            .list_files(&self.layout.task(task))
            .await
            .expect("list state files");
        files
            .iter()
            .filter_map(|path| Some(path.filename()?.split('.').next()?.to_string()))
            .collect()
    }

    /// The checkpoint HEAD of `task` points at, and every descriptor id present.
    pub async fn ids(&self, task: u32) -> (Option<u64>, Vec<u64>) {
        let t = self.layout.task(task);
        let head = self.store.read_head(&t).await.expect("read HEAD");
        let present = self
            .store
            .list_checkpoints(&t)
            .await
            .expect("list checkpoints");
        (
            head.and_then(|(h, _)| h.checkpoint).map(|c| c.0),
            present.into_iter().map(|c| c.0).collect(),
        )
    }

    /// Waits until every task's committed checkpoint has consumed `ends[task]` records of
    /// `input`; `alive` is checked between polls.
    pub async fn wait_until_covered(&self, input: &str, ends: &[i64], mut alive: impl FnMut()) {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let mut behind = 0;
            for (task, end) in ends.iter().enumerate() {
                let done = self
                    .head(task as u32)
                    .await
                    .map_or(0, |d| d.source_offsets.get(input).copied().unwrap_or(0));
                behind += end - done;
            }
            if behind == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tasks still {behind} records behind after 10 minutes"
            );
            alive();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Asserts that `output` (the changelog) and every task's committed state hold exactly the
    /// last row per key of `input`, computed from the input alone. Returns the live rows.
    pub async fn assert_materialized(
        &self,
        env: &TestEnv,
        input: &str,
        output: &str,
        ends: &[i64],
        scratch: &Path,
    ) -> usize {
        let partitions = ends.len() as u32;
        let json =
            |bytes: &[u8]| -> serde_json::Value { serde_json::from_slice(bytes).expect("JSON") };
        let reference: Vec<BTreeMap<Vec<u8>, Option<serde_json::Value>>> =
            read_table(env, input, partitions, Some(ends))
                .into_iter()
                .map(|table| {
                    table
                        .into_iter()
                        .map(|(key, event)| {
                            let after = event
                                .map(|e| json(&e)["after"].take())
                                .filter(|a| !a.is_null());
                            (key, after)
                        })
                        .collect()
                })
                .collect();
        // Exactly-once output is read as a broker hiding aborted transactions shows it, when
        // the job kept every checkpoint (tests with a small `retain` read every record).
        let committed = match self.head(0).await {
            Some(d) if d.transactional_id.is_some() => {
                match self.try_committed_transactions(partitions).await {
                    Ok(committed) => Some(committed),
                    Err(e) => {
                        eprintln!("reading every output record, aborted or not: {e}");
                        None
                    }
                }
            }
            _ => None,
        };
        let changelog = read_table_where(env, output, partitions, None, committed.as_ref());
        for task in 0..partitions as usize {
            let published: BTreeMap<_, _> = changelog[task]
                .iter()
                .map(|(k, v)| (k.clone(), v.as_deref().map(json)))
                .collect();
            assert_eq!(
                published.len(),
                reference[task].len(),
                "task {task}: keys in the changelog vs in the input"
            );
            for (key, want) in &reference[task] {
                assert_eq!(
                    published.get(key),
                    Some(want),
                    "task {task}: changelog of key {}",
                    String::from_utf8_lossy(key)
                );
            }
            let state: BTreeMap<_, _> = self
                .state(task as u32, &scratch.join(format!("inspect-{task}")))
                .await
                .into_iter()
                .map(|(k, v)| (k, json(&v)))
                .collect();
            let want: BTreeMap<_, _> = reference[task]
                .iter()
                .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
                .collect();
            assert_eq!(state.len(), want.len(), "task {task}: rows in state");
            assert!(
                state == want,
                "task {task}: state differs from the reference"
            );
        }
        reference
            .iter()
            .map(|t| t.values().filter(|v| v.is_some()).count())
            .sum()
    }

    /// The rows in `task`'s committed state: downloads HEAD's files into `dir` and opens them.
    pub async fn state(&self, task: u32, dir: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let Some(descriptor) = self.head(task).await else {
            return BTreeMap::new();
        };
        let t = self.layout.task(task);
        std::fs::create_dir_all(dir).expect("state dir");
        for file in &descriptor.files {
            self.store
                .get_file(
                    &t.file(&file.hash, FileKind::of(&file.name)),
                    &dir.join(&file.name),
                    file.size,
                    &file.hash,
                )
                .await
                .expect("download state file");
        }
        let state = RocksState::open(dir).expect("open downloaded state");
        let mut rows = BTreeMap::new();
        state
            .scan_prefix(&[], &mut |k, v| {
                if let Some((_, key)) = sluice_worker::keys::decode(k) {
                    rows.insert(key.to_vec(), v.to_vec());
                }
                true
            })
            .expect("scan state");
        rows
    }
}

/// Creates `topic` with `partitions` partitions (an existing one is fine).
pub fn create_topic(env: &TestEnv, topic: &str, partitions: u32) {
    create_topic_with(env, topic, partitions, &[]);
}

/// Creates `topic` with `partitions` partitions and topic `config` such as
/// `("cleanup.policy", "compact")` (an existing one is fine).
pub fn create_topic_with(env: &TestEnv, topic: &str, partitions: u32, config: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = env.kafka_config().create().expect("admin");
    let mut new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(1));
    for (key, value) in config {
        new = new.set(key, value);
    }
    let topics = [new];
    block_on_admin(admin.create_topics(&topics, &AdminOptions::new())).expect("create topic");
    wait_for_topic(env, topic, partitions);
}

/// Runs an admin request to completion on a thread and runtime of its own: callers may be
/// inside an async runtime.
fn block_on_admin<T: Send>(request: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(request)
            })
            .join()
            .expect("admin request thread")
    })
}

/// Grows `topic`, on the broker of [`TestEnv::on_growable_broker`], to `total` partitions, and
/// waits until the broker lists them.
///
/// Tansu 0.6 does not implement CreatePartitions (librdkafka answers "UnsupportedFeature"), so
/// this raises the count where that broker keeps it: `num_partitions` of the topic in its
/// metadata object `clusters/tansu_cluster/meta.json` on the S3 server, written with `If-Match`
/// so a concurrent write of the broker's is not lost. The broker holds the metadata in memory
/// and writes it back with `If-Match` too: creating a throwaway topic makes that write miss, so
/// the broker reads the object again and from then on serves the new count, as a broker that
/// had run CreatePartitions would. Records in the existing partitions are untouched.
pub fn grow_topic(env: &TestEnv, topic: &str, total: u32) {
    use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
    use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, UpdateVersion};
    let store = AmazonS3Builder::from_env()
        .with_endpoint(&env.s3_endpoint)
        .with_bucket_name(&env.grow_bucket)
        .with_allow_http(true)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .build()
        .expect("S3 settings from e2e/env/up.sh are complete");
    let path = object_store::path::Path::from("clusters/tansu_cluster/meta.json");
    block_on_admin(async {
        loop {
            let got = store.get(&path).await.expect("the broker's metadata");
            let version = UpdateVersion {
                e_tag: got.meta.e_tag.clone(),
                version: got.meta.version.clone(),
            };
            let bytes = got.bytes().await.expect("metadata bytes");
            let mut meta: serde_json::Value =
                serde_json::from_slice(&bytes).expect("metadata JSON");
            let count = &mut meta["topics"][topic]["topic"]["num_partitions"];
            assert!(
                count.is_number(),
                "no topic {topic} in the broker's metadata: {meta}"
            );
            *count = total.into();
            let put = store
                .put_opts(
                    &path,
                    serde_json::to_vec(&meta).expect("JSON").into(),
                    PutOptions::from(PutMode::Update(version)),
                )
                .await;
            match put {
                Ok(_) => return,
                Err(object_store::Error::Precondition { .. }) => continue,
                Err(e) => panic!("writing the broker's metadata: {e}"),
            }
        }
    });
    create_topic(env, &format!("{topic}.nudge"), 1);
    wait_for_topic(env, topic, total);
}

/// Deletes `topic` and waits until the broker no longer lists it.
pub fn delete_topic(env: &TestEnv, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = env.kafka_config().create().expect("admin");
    for result in
        block_on_admin(admin.delete_topics(&[topic], &AdminOptions::new())).expect("delete topic")
    {
        result.expect("topic deleted");
    }
    let consumer: BaseConsumer = env.kafka_config().create().expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()
        .and_then(|m| Some(m.topics().first()?.error().is_none()))
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "topic {topic} still listed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a test changes in an example manifest so it runs against the test servers.
pub struct ExampleRun<'a> {
    /// File name under `manifests/examples/`.
    pub example: &'a str,
    /// Job name.
    pub name: &'a str,
    /// Source topic (the example's topics are replaced by this one).
    pub input: &'a str,
    /// Sink topic.
    pub output: &'a str,
    /// Dead-letter topic.
    pub dead_letter: &'a str,
    /// Workers.
    pub parallelism: u32,
    /// Checkpoint interval, e.g. `2s`.
    pub interval: &'a str,
    /// Fields of `spec` to set, e.g. a shorter `eventTime.idleTimeout` (`{}` for none).
    pub spec_patch: serde_json::Value,
}

/// Writes the example manifest `run.example` into `dir`, pointed at the test servers and
/// topics; its steps, format and event time stay as the example has them.
pub fn write_example_job(env: &TestEnv, dir: &Path, run: &ExampleRun<'_>) -> JobFiles {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/examples")
        .join(run.example);
    let text = std::fs::read_to_string(&path).expect("read example");
    let mut job: serde_json::Value = serde_norway::from_str(&text).expect("example YAML");
    let storage = format!("s3://{}/{}", env.s3_bucket, run.name);
    job["metadata"] = serde_json::json!({"name": run.name, "namespace": "e2e"});
    let spec = &mut job["spec"];
    spec["parallelism"] = run.parallelism.into();
    let kafka = &mut spec["source"]["kafka"];
    kafka["bootstrapServers"] = env.kafka_bootstrap.clone().into();
    kafka["topics"] = serde_json::json!([run.input]);
    if let Some(kafka) = kafka.as_object_mut() {
        for field in ["auth", "properties", "startingOffsets"] {
            kafka.remove(field);
        }
    }
    spec["sink"]["kafka"]["topic"] = run.output.into();
    spec["deadLetter"] = serde_json::json!({"topic": run.dead_letter});
    if let Some(patch) = run.spec_patch.as_object() {
        for (field, value) in patch {
            spec[field] = value.clone();
        }
    }
    spec["checkpoint"] = serde_json::json!({
        "storage": storage,
        "endpoint": env.s3_endpoint,
        "interval": run.interval,
        "retain": 3,
    });
    let manifest = dir.join(format!("{}.yaml", run.name));
    std::fs::write(&manifest, serde_norway::to_string(&job).expect("job YAML")).expect("write job");
    JobFiles {
        manifest,
        namespace: "e2e".into(),
        name: run.name.into(),
        storage,
    }
}

/// One record read back from a topic.
#[derive(Clone, Debug)]
pub struct Received {
    /// Partition.
    pub partition: i32,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Headers, by name (the last of a repeated name).
    pub headers: BTreeMap<String, Vec<u8>>,
}

impl Received {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// Produces `values` as JSON to partition 0 of `topic`, and waits until they are written.
pub fn produce_json(
    env: &TestEnv,
    topic: &str,
    values: impl IntoIterator<Item = serde_json::Value>,
) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = env.kafka_config().create().expect("producer");
    for value in values {
        let payload = value.to_string();
        let record: BaseRecord<'_, str, str> =
            BaseRecord::to(topic).partition(0).payload(payload.as_str());
        producer.send(record).expect("enqueue");
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

/// The distinct (key, JSON value) pairs of `records`, values in canonical JSON.
pub fn distinct(records: &[Received]) -> BTreeSet<(String, String)> {
    records
        .iter()
        .map(|r| {
            let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
            let value: serde_json::Value =
                serde_json::from_slice(r.value.as_deref().unwrap_or(b"null")).expect("JSON result");
            (key, value.to_string())
        })
        .collect()
}

/// Reads `topic` (of `partitions`) until its distinct results hold `want` (within 3 minutes),
/// then asserts they hold nothing else.
pub fn expect_output(
    env: &TestEnv,
    topic: &str,
    partitions: u32,
    want: &BTreeSet<(String, String)>,
    alive: impl FnMut(),
) {
    let got = read_until(
        env,
        topic,
        partitions,
        Duration::from_secs(180),
        |records| want.is_subset(&distinct(records)),
        alive,
    );
    let got = distinct(&got);
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "output differs from the reference: missing {missing:?}, unexpected {extra:?}"
    );
}

/// Reads `topic` from the beginning (`read_committed`) until `done` says the records read so far
/// are enough, calling `alive` between polls (e.g. to assert no worker crashed); fails after
/// `within`.
pub fn read_until(
    env: &TestEnv,
    topic: &str,
    partitions: u32,
    within: Duration,
    mut done: impl FnMut(&[Received]) -> bool,
    mut alive: impl FnMut(),
) -> Vec<Received> {
    use rdkafka::message::Headers;
    let consumer = reader(env, topic, partitions);
    let deadline = Instant::now() + within;
    let mut records = Vec::new();
    let mut checked = Instant::now();
    while !done(&records) {
        assert!(
            Instant::now() < deadline,
            "reading {topic}: still not done after {within:?} with {} records",
            records.len()
        );
        if checked.elapsed() > Duration::from_secs(1) {
            alive();
            checked = Instant::now();
        }
        for _ in 0..10_000 {
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                break;
            };
            let message = message.expect("fetch");
            let headers = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            records.push(Received {
                partition: message.partition(),
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
    }
    records
}
