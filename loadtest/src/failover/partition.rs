//! `loadtest failover --partition SPEC`: the failover scenario with a network fault between
//! hosts of their own (see [`crate::netns`]) instead of a signal to a process. The fault lasts
//! `--fault-for`, is healed, and the report adds how long the system took to recover. What
//! each fault must and must not do is in docs/network-faults.md; [`promises`] checks it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::time::Instant;
use topology_client::topology::Topology;

use super::check::{self, Analysis, ReadBack};
use super::report::{self, ms_between, opt_ms, row, WriterRef};
use super::scenario::{self, Watch};
use crate::cluster::Cluster;
use crate::logging::LogFormat;
use crate::netns::cluster::{run_in_client, NetCluster, CLIENT, ELECTION, PROXY};
use crate::netns::{Lab, NsHandle};
use crate::run::{self, RunReport};

/// A host of the cluster, by its role at the time of the fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Writer,
    Election,
    Proxy,
}

impl Role {
    fn parse(s: &str) -> anyhow::Result<Role> {
        match s {
            "writer" => Ok(Role::Writer),
            "election" => Ok(Role::Election),
            "proxy" => Ok(Role::Proxy),
            _ => bail!("{s:?}: expected writer, election or proxy"),
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Election => "election",
            Role::Proxy => "proxy",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Partition {
    /// writer-election and the writer cannot reach each other; the proxy still reaches both.
    ElectionWriter,
    /// rw-proxy and writer-election cannot reach each other.
    ProxyElection,
    /// The writer reaches nobody and nobody reaches it.
    WriterIsolated,
    /// rw-proxy and the writer cannot reach each other; writer-election still reaches both.
    ProxyWriter,
    /// Packets from one host to another are dropped, the other direction works.
    OneWay { from: Role, to: Role },
    /// A share of the packets in and out of a host are dropped.
    Loss { host: Role, percent: u8 },
    /// Every byte to and from a storage node waits this long (both directions).
    Delay { host: Role, ms: u64 },
}

impl std::str::FromStr for Partition {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Partition> {
        let spec = s.trim();
        if let Some(rest) = spec.strip_prefix("one-way:") {
            let Some((a, b)) = rest.split_once("->") else {
                bail!("{spec:?}: expected one-way:FROM->TO, e.g. one-way:writer->election");
            };
            let (from, to) = (Role::parse(a)?, Role::parse(b)?);
            if from == to {
                bail!("{spec:?}: a host and itself");
            }
            return Ok(Partition::OneWay { from, to });
        }
        if let Some(rest) = spec.strip_prefix("loss:") {
            let Some((h, p)) = rest.split_once('=') else {
                bail!("{spec:?}: expected loss:HOST=PERCENT%, e.g. loss:writer=30%");
            };
            let percent: u8 = p
                .trim_end_matches('%')
                .parse()
                .with_context(|| format!("{spec:?}: {p:?} is not a percentage"))?;
            if percent > 100 {
                bail!("{spec:?}: at most 100%");
            }
            return Ok(Partition::Loss {
                host: Role::parse(h)?,
                percent,
            });
        }
        if let Some(rest) = spec.strip_prefix("delay:") {
            let Some((h, d)) = rest.split_once('=') else {
                bail!("{spec:?}: expected delay:writer=DURATION, e.g. delay:writer=300ms");
            };
            let host = Role::parse(h)?;
            if host != Role::Writer {
                bail!("{spec:?}: only a storage node's link can be delayed (delay:writer=...)");
            }
            let d = humantime::parse_duration(d)
                .with_context(|| format!("{spec:?}: {d:?} is not a duration"))?;
            return Ok(Partition::Delay {
                host,
                ms: d.as_millis() as u64,
            });
        }
        match spec {
            "election-writer" | "writer-election" => Ok(Partition::ElectionWriter),
            "proxy-election" | "election-proxy" => Ok(Partition::ProxyElection),
            "writer-isolated" => Ok(Partition::WriterIsolated),
            "proxy-writer" | "writer-proxy" => Ok(Partition::ProxyWriter),
            _ => bail!(
                "{spec:?}: expected election-writer, proxy-election, writer-isolated, proxy-writer, \
                 one-way:FROM->TO, loss:HOST=P% or delay:writer=D"
            ),
        }
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Partition::ElectionWriter => write!(f, "election-writer"),
            Partition::ProxyElection => write!(f, "proxy-election"),
            Partition::WriterIsolated => write!(f, "writer-isolated"),
            Partition::ProxyWriter => write!(f, "proxy-writer"),
            Partition::OneWay { from, to } => {
                write!(f, "one-way:{}->{}", from.as_str(), to.as_str())
            }
            Partition::Loss { host, percent } => write!(f, "loss:{}={percent}%", host.as_str()),
            Partition::Delay { host, ms } => write!(f, "delay:{}={ms}ms", host.as_str()),
        }
    }
}

/// What the fault must lead to, by docs/network-faults.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// Exactly one failover (epoch + 1, another writer), the proxy follows it.
    OneFailover,
    /// No failover: same writer and epoch throughout; the proxy stays ready.
    NoFailover,
    /// Only the safety rules: whether a failover happens depends on timing, and is reported.
    SafetyOnly,
}

impl Partition {
    pub fn expect(self) -> Expect {
        match self {
            Partition::ElectionWriter | Partition::WriterIsolated => Expect::OneFailover,
            // The election's probes of the writer get no answer either way round.
            Partition::OneWay {
                from: Role::Writer,
                to: Role::Election,
            }
            | Partition::OneWay {
                from: Role::Election,
                to: Role::Writer,
            } => Expect::OneFailover,
            Partition::ProxyElection | Partition::ProxyWriter | Partition::OneWay { .. } => {
                Expect::NoFailover
            }
            Partition::Loss { .. } | Partition::Delay { .. } => Expect::SafetyOnly,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProxyDuringFault {
    /// /health/ready samples taken every 100 ms while the fault was on.
    pub ready_samples: u64,
    pub not_ready_samples: u64,
    /// Lowest rw_proxy_election_reachable seen while the fault was on (0 = it noticed).
    pub election_reachable_min: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    pub partition: String,
    pub expect: Expect,
    pub passed: bool,
    pub failures: Vec<String>,
    pub old_writer: WriterRef,
    pub new_writer: Option<WriterRef>,
    /// Epoch at the end of the run (after the heal).
    pub final_epoch: u64,
    /// Distinct writers published after the fault (0 = no failover).
    pub writer_changes: u64,
    pub fault_at_ms: f64,
    pub healed_at_ms: f64,
    /// Fault -> a topology with another writer seen on /v1/topology.
    pub election_publish_ms: Option<f64>,
    /// Heal -> the election has a writer, the proxy follows it at its epoch and reaches the
    /// election again, and a write through the proxy is acknowledged.
    pub recovery_ms: Option<f64>,
    /// Failed writes sent more than a second after the new writer was published (a failover
    /// must have ended their window by then).
    pub failed_after_publish: u64,
    /// Writes acknowledged at the old epoch after the new writer was published: the window a
    /// deposed writer still accepts in, until the new epoch reaches the stream.
    pub old_epoch_acks_after_publish: u64,
    pub proxy_during_fault: ProxyDuringFault,
    pub analysis: Analysis,
    pub read_back: ReadBack,
    pub read_errors: BTreeMap<String, u64>,
    pub load: RunReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_dir: Option<String>,
}

pub(super) async fn main(
    args: super::FailoverArgs,
    partition: Partition,
    log_format: LogFormat,
) -> anyhow::Result<u8> {
    // The flags were checked by super::main (scenario::validate).
    if let Err(why) = crate::netns::available() {
        bail!("--partition needs network namespaces: {why}");
    }
    let mut names: Vec<String> = (1..=args.nodes).map(|i| format!("node-{i}")).collect();
    names.extend([ELECTION, PROXY, CLIENT].map(String::from));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let lab = Lab::new(&refs)?;
    let client_ns = NsHandle::open(&lab.host(CLIENT)?.ns)?;
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    eprintln!(
        "failover --partition {partition}: starting a {}-node cluster on network namespaces ...",
        args.nodes
    );
    let a = args.clone();
    let work = tokio::task::spawn_blocking(move || {
        run_in_client(client_ns, move || {
            Box::pin(async move {
                let opts = scenario::cluster_options(&a, log_format);
                let mut net = NetCluster::start(lab, &opts).await?;
                let mut cancel = cancel_rx;
                let result = tokio::select! {
                    r = scenario(&a, partition, &net) => r,
                    _ = cancel.changed() => Err(anyhow::anyhow!("interrupted")),
                };
                let _ = net.lab.heal_all();
                net.stop(Duration::from_secs(10));
                let kept = a.keep_dir.then(|| {
                    // The directory outlives the cluster; the namespaces do not.
                    let dir = std::mem::replace(
                        &mut net.cluster.dir,
                        match tempfile::tempdir() {
                            Ok(d) => d,
                            Err(_) => return String::new(),
                        },
                    );
                    dir.keep().display().to_string()
                });
                let mut report = result?;
                report.kept_dir = kept.filter(|k| !k.is_empty());
                Ok(report)
            })
        })
    });
    tokio::pin!(work);
    let joined = tokio::select! {
        j = &mut work => j,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted: healing, stopping the cluster and deleting its namespaces");
            let _ = cancel_tx.send(true);
            work.await
        }
    };
    let report = joined.context("the scenario thread failed")??;
    report::print(args.json, &report, report.passed, render_text)
}

async fn inject(p: Partition, c: &NetCluster, writer: &str) -> anyhow::Result<()> {
    let host = |r: Role| match r {
        Role::Writer => writer,
        Role::Election => ELECTION,
        Role::Proxy => PROXY,
    };
    let lab = &c.lab;
    match p {
        Partition::ElectionWriter => lab.cut(ELECTION, writer),
        Partition::ProxyElection => lab.cut(PROXY, ELECTION),
        Partition::WriterIsolated => lab.isolate(writer),
        Partition::ProxyWriter => lab.cut(PROXY, writer),
        Partition::OneWay { from, to } => lab.cut_one_way(host(from), host(to)),
        Partition::Loss { host: h, percent } => lab.loss(host(h), percent),
        Partition::Delay { host: h, ms } => {
            c.relay(host(h))?.set_delay(Duration::from_millis(ms));
            Ok(())
        }
    }
}

fn heal(c: &NetCluster) -> anyhow::Result<()> {
    for (_, r) in &c.relays {
        r.set_delay(Duration::ZERO);
    }
    c.lab.heal_all()
}

async fn scenario(
    args: &super::FailoverArgs,
    p: Partition,
    net: &NetCluster,
) -> anyhow::Result<PartitionReport> {
    let c = &net.cluster;
    let watch = Watch::start(c).await?;
    let (first, old_writer) = (watch.first.clone(), watch.old_writer.clone());
    let old = &old_writer;
    let cfg = scenario::load_config(args, run::parse_target(&c.proxy_url).await?);
    let start = Instant::now();
    let load = tokio::spawn(run::execute_at(cfg, c.proxy_url.clone(), start));

    tokio::time::sleep_until(start + args.fault_after).await;
    let fault_at = Instant::now();
    if let Err(e) = inject(p, net, &old.name).await {
        load.abort();
        return Err(e.context("injecting the fault"));
    }
    tracing::info!(partition = %p, writer = %old.name, "fault injected");

    // The proxy's view while the fault is on.
    let mut during = ProxyDuringFault::default();
    let heal_at = start + args.fault_after + args.fault_for;
    let ready_url = format!("{}/health/ready", c.admin_url);
    while Instant::now() < heal_at {
        let ready = c
            .client
            .get(&ready_url)
            .await
            .is_ok_and(|r| r.status == 200);
        during.ready_samples += 1;
        if !ready {
            during.not_ready_samples += 1;
        }
        if let Some(v) = c.proxy_metric("rw_proxy_election_reachable").await {
            during.election_reachable_min =
                Some(during.election_reachable_min.map_or(v, |m: f64| m.min(v)));
        }
        tokio::time::sleep_until((Instant::now() + Duration::from_millis(100)).min(heal_at)).await;
    }
    let healed_at = Instant::now();
    heal(net).context("healing the fault")?;
    tracing::info!(partition = %p, "healed");
    let recovered_at = wait_recovered(c, Duration::from_secs(30)).await;

    let outcome = load.await.context("the load task failed")?;
    let timeline = watch.stop();
    let publish = scenario::first_publication(&timeline, fault_at, &old.name);
    let current = c.topology().await.ok();
    let final_epoch = current.as_ref().map_or(first.epoch, |t| t.epoch);
    let new_writer = current
        .as_ref()
        .and_then(|t| t.writer.as_ref().map(|w| (w.name.clone(), t.epoch)))
        .filter(|(n, e)| *n != old.name || *e != first.epoch)
        .map(|(name, epoch)| WriterRef { name, epoch });

    let (lines, read_back) = scenario::settle(c, &c.nodes, &outcome.history).await?;
    let fault_us = (fault_at - start).as_micros() as u64;
    let analysis = check::analyze(&outcome.history, &lines, fault_us, fault_us, &old.name);
    let failed_after_publish = publish.map_or(0, |t| {
        let limit = (t - start + Duration::from_secs(1)).as_micros() as u64;
        outcome
            .history
            .iter()
            .filter(|h| !h.acked() && h.sent_us > limit)
            .count() as u64
    });

    let old_epoch_acks_after_publish = publish.map_or(0, |t| {
        let at = (t - start).as_micros() as u64;
        outcome
            .history
            .iter()
            .filter(|h| h.acked() && h.epoch == Some(first.epoch) && h.ack_us > at)
            .count() as u64
    });
    let mut r = PartitionReport {
        partition: p.to_string(),
        expect: p.expect(),
        passed: false,
        failures: Vec::new(),
        writer_changes: writer_changes(&timeline, fault_at, old),
        old_writer,
        new_writer,
        final_epoch,
        fault_at_ms: ms_between(start, fault_at),
        healed_at_ms: ms_between(start, healed_at),
        election_publish_ms: publish.map(|t| ms_between(fault_at, t)),
        recovery_ms: recovered_at.map(|t| ms_between(healed_at, t)),
        failed_after_publish,
        old_epoch_acks_after_publish,
        proxy_during_fault: during,
        read_errors: check::read_errors(&outcome.report.errors, &analysis),
        analysis,
        read_back,
        load: outcome.report,
        kept_dir: None,
    };
    r.failures = promises(&r);
    r.failures.extend(check::failover_time_failure(
        args.max_failover_time,
        r.analysis.client_failover_ms,
    ));
    r.passed = r.failures.is_empty();
    if let Some(path) = &args.history {
        run::history::write_jsonl(path, &outcome.history)?;
    }
    Ok(r)
}

/// Distinct (writer, epoch) pairs published at or after `fault_at` other than `old`'s: 0 is no
/// failover.
fn writer_changes(timeline: &[(Instant, Topology)], fault_at: Instant, old: &WriterRef) -> u64 {
    let mut seen: Vec<(&str, u64)> = Vec::new();
    for (_, topo) in timeline.iter().filter(|(t, _)| *t >= fault_at) {
        if let Some(w) = &topo.writer {
            let key = (w.name.as_str(), topo.epoch);
            if key != (old.name.as_str(), old.epoch) && !seen.contains(&key) {
                seen.push(key);
            }
        }
    }
    seen.len() as u64
}

/// Heal -> election has a writer, the proxy is at its epoch and reaches the election, and a
/// write through the proxy is acknowledged. None if that did not happen within `within`.
async fn wait_recovered(c: &Cluster, within: Duration) -> Option<Instant> {
    let deadline = Instant::now() + within;
    let mut i = 0u64;
    while Instant::now() < deadline {
        i += 1;
        let ok = async {
            let t = c.topology().await.ok()?;
            t.writer.as_ref()?;
            let epoch = c.proxy_metric("rw_proxy_writer_epoch").await?;
            let reachable = c.proxy_metric("rw_proxy_election_reachable").await?;
            if epoch as u64 != t.epoch || reachable < 1.0 {
                return None;
            }
            let r = c
                .client
                .put(&format!("{}/kv/recovery-probe-{i}", c.proxy_url), "probe")
                .await
                .ok()?;
            (r.status == 200).then_some(())
        }
        .await;
        if ok.is_some() {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// The promises of docs/network-faults.md, one sentence per broken one.
pub fn promises(r: &PartitionReport) -> Vec<String> {
    let a = &r.analysis;
    let mut f = check::safety_failures(a);
    f.extend(check::read_back_failures(&r.read_back));
    if r.recovery_ms.is_none() {
        f.push("the system did not recover within 30 s of the heal".into());
    }
    match r.expect {
        Expect::OneFailover => {
            if r.final_epoch != r.old_writer.epoch + 1 || r.writer_changes != 1 {
                f.push(format!(
                    "expected exactly one failover (epoch {} -> {}), got epoch {} after {} writer changes",
                    r.old_writer.epoch,
                    r.old_writer.epoch + 1,
                    r.final_epoch,
                    r.writer_changes
                ));
            }
            if r.new_writer
                .as_ref()
                .is_some_and(|w| w.name == r.old_writer.name)
            {
                f.push("the writer after the failover is the cut-off one".into());
            }
            if a.first_new_ack_ms.is_none() {
                f.push(
                    "no write was acknowledged by the new writer: the proxy did not follow".into(),
                );
            }
            if r.failed_after_publish > 0 {
                f.push(format!(
                    "{} writes sent more than 1 s after the new writer was published failed",
                    r.failed_after_publish
                ));
            }
        }
        Expect::NoFailover => {
            if r.final_epoch != r.old_writer.epoch || r.writer_changes != 0 {
                f.push(format!(
                    "no failover expected, but the epoch went {} -> {} ({} writer changes)",
                    r.old_writer.epoch, r.final_epoch, r.writer_changes
                ));
            }
            if r.proxy_during_fault.not_ready_samples > 0 {
                f.push(format!(
                    "rw-proxy was not ready in {} of {} samples during the fault",
                    r.proxy_during_fault.not_ready_samples, r.proxy_during_fault.ready_samples
                ));
            }
        }
        Expect::SafetyOnly => {}
    }
    f
}

pub fn render_text(r: &PartitionReport) -> String {
    use std::fmt::Write;
    let a = &r.analysis;
    let mut out = String::new();
    let s = &mut out;
    let _ = writeln!(
        s,
        "failover --partition {} (expect: {:?})",
        r.partition, r.expect
    );
    row(
        s,
        "writer before -> after",
        report::writer_change(&r.old_writer, r.new_writer.as_ref()),
    );
    row(
        s,
        "writer changes after the fault",
        r.writer_changes.to_string(),
    );
    row(
        s,
        "fault on / healed",
        format!("{} ms / {} ms into the load", r.fault_at_ms, r.healed_at_ms),
    );
    row(
        s,
        "election published new writer",
        opt_ms(r.election_publish_ms),
    );
    row(s, "client-seen failover time", opt_ms(a.client_failover_ms));
    row(s, "recovery after the heal", opt_ms(r.recovery_ms));
    row(
        s,
        "proxy not ready during the fault",
        format!(
            "{} of {} samples, election_reachable min {:?}",
            r.proxy_during_fault.not_ready_samples,
            r.proxy_during_fault.ready_samples,
            r.proxy_during_fault.election_reachable_min
        ),
    );
    row(
        s,
        "failed 1 s after the publication",
        r.failed_after_publish.to_string(),
    );
    row(
        s,
        "old-epoch acks after the publication",
        r.old_epoch_acks_after_publish.to_string(),
    );
    report::history_rows(s, a, &r.read_errors, &r.read_back, &r.load);
    report::verdict(s, r.kept_dir.as_deref(), r.passed, &r.failures);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_spec_parses_and_prints_back() {
        for s in [
            "election-writer",
            "proxy-election",
            "writer-isolated",
            "proxy-writer",
            "one-way:writer->election",
            "loss:writer=30%",
            "delay:writer=300ms",
        ] {
            let p: Partition = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        assert_eq!(
            "one-way:writer->election"
                .parse::<Partition>()
                .unwrap()
                .expect(),
            Expect::OneFailover
        );
        assert_eq!(
            "proxy-election".parse::<Partition>().unwrap().expect(),
            Expect::NoFailover
        );
    }

    #[test]
    fn bad_specs_are_refused() {
        for s in [
            "",
            "writer",
            "loss:writer=130%",
            "one-way:writer",
            "delay:proxy=1s",
            "one-way:proxy->proxy",
            "loss:moon=3%",
        ] {
            assert!(s.parse::<Partition>().is_err(), "{s}");
        }
    }

    #[test]
    fn writer_changes_count_each_new_writer_and_epoch_after_the_fault_once() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        use crate::failover::scenario::tests::topo;
        let old = WriterRef {
            name: "node-1".into(),
            epoch: 1,
        };
        let timeline = vec![
            // Before the fault: not counted.
            (at(0), topo(Some("node-3"), 9)),
            // The old writer still published, then no writer: no change.
            (at(10), topo(Some("node-1"), 1)),
            (at(20), topo(None, 1)),
            (at(30), topo(Some("node-2"), 2)),
            // Republished (a new revision of the same writer): the same change.
            (at(40), topo(Some("node-2"), 2)),
            // The old writer back at a new epoch is a change too.
            (at(50), topo(Some("node-1"), 3)),
        ];
        assert_eq!(writer_changes(&timeline, at(5), &old), 2);
        assert_eq!(writer_changes(&timeline[..3], at(5), &old), 0);
    }
}
