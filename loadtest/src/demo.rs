//! `loadtest demo`: the README's first command. A whole cluster on 127.0.0.1 until Ctrl-C.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::cluster::{Cluster, ClusterOptions, MaxReaderLag, TopologyMode};
use crate::logging::LogFormat;
use crate::node::api::Api;

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// rw-proxy traffic port.
    #[arg(long, default_value_t = 8080)]
    pub proxy_port: u16,
    /// rw-proxy admin port (/health, /health/ready, /metrics).
    #[arg(long, default_value_t = 9901)]
    pub admin_port: u16,
    /// writer-election port (/v1/topology, /v1/switchover, /metrics).
    #[arg(long, default_value_t = 8081)]
    pub election_port: u16,
    /// First demo node port; the nodes get base, base+1, ...
    #[arg(long, default_value_t = 9001)]
    pub base_port: u16,
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Directory holding rw-proxy and writer-election (default: next to this executable).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Simulated replication lag of the nodes.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub lag: Duration,
    /// Give rw-proxy a static topology instead of following writer-election.
    #[arg(long)]
    pub static_topology: bool,
    /// Storage node API of the nodes (and of the election's promotion calls).
    #[arg(long, value_enum, default_value_t = Api::Microstream)]
    pub api: Api,
    /// Turn rw-proxy's read-your-writes off (on by default in the demo: a write answers with
    /// the `rwp_read_after` cookie, a read that carries it sees that write).
    #[arg(long)]
    pub no_read_your_writes: bool,
    /// How long a read-your-writes token matters (rw-proxy's default when not given).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub read_your_writes_window: Option<Duration>,
    /// rw-proxy's lag gate: a reader further behind the writer than this leaves the read pool
    /// (it comes back under half of it).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_reader_lag: Option<Duration>,
    /// rw-proxy's lag gate in log lines (offsets) instead of, or besides, time.
    #[arg(long)]
    pub max_reader_lag_offsets: Option<u64>,
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

pub async fn main(args: DemoArgs, log_format: LogFormat) -> anyhow::Result<u8> {
    let opts = ClusterOptions {
        nodes: args.nodes,
        base_port: Some(args.base_port),
        proxy_port: Some(args.proxy_port),
        admin_port: Some(args.admin_port),
        election_port: Some(args.election_port),
        bin_dir: args.bin_dir.clone(),
        node_args: crate::cluster::lag_args(args.lag),
        force_static: args.static_topology,
        api: args.api,
        log_format,
        read_your_writes: !args.no_read_your_writes,
        read_your_writes_window: args.read_your_writes_window,
        max_reader_lag: (args.max_reader_lag.is_some() || args.max_reader_lag_offsets.is_some())
            .then_some(MaxReaderLag {
                offsets: args.max_reader_lag_offsets,
                duration: args.max_reader_lag,
            }),
        ..ClusterOptions::default()
    };
    eprintln!(
        "starting {} nodes, writer-election and rw-proxy ...",
        args.nodes
    );
    let stop = crate::signals::terminated();
    tokio::pin!(stop);
    // Ctrl-C during start-up drops the half-built cluster: its Drop kills every child.
    let mut cluster = tokio::select! {
        c = Cluster::start(&opts) => c?,
        _ = &mut stop => {
            eprintln!("interrupted during start-up");
            return Ok(130);
        }
    };
    print!("{}", banner(&cluster));

    let follower = tokio::spawn(crate::topo::follow(
        cluster.election_url.clone(),
        |old, new| {
            for line in crate::topo::describe_change(old, new) {
                println!("{}  {line}", now());
            }
        },
    ));

    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {
                for (name, status) in cluster.group.reap() {
                    println!("{}  {name} exited ({status})", now());
                }
            }
        }
    }
    follower.abort();
    eprintln!("stopping every child ...");
    let dir = cluster.dir.path().display().to_string();
    tokio::task::block_in_place(|| cluster.stop(Duration::from_secs(10)));
    drop(cluster);
    eprintln!("stopped; removed {dir}");
    Ok(0)
}

fn banner(c: &Cluster) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let p = &c.proxy_url;
    let _ = writeln!(s);
    let _ = writeln!(s, "cluster is up (Ctrl-C stops everything)");
    let _ = writeln!(s, "  rw-proxy          {p}   (admin {})", c.admin_url);
    let _ = writeln!(
        s,
        "  writer-election   {}   (topology {}/v1/topology)",
        c.election_url, c.election_url
    );
    for n in &c.nodes {
        let pid = c.pid(&n.name).map(|p| p.to_string()).unwrap_or_default();
        let _ = writeln!(s, "  {:<17} {}   (pid {pid})", n.name, n.url);
    }
    let _ = writeln!(s, "  files             {}", c.dir.path().display());
    if c.topology_mode == TopologyMode::Static {
        let _ = writeln!(
            s,
            "  NOTE: rw-proxy runs with a static topology (writer {}): writer changes do not reach it",
            c.static_writer.as_deref().unwrap_or("?")
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "try:");
    let _ = writeln!(s, "  curl -X PUT --data 'hello' {p}/kv/greeting");
    let _ = writeln!(s, "  curl {p}/kv/greeting");
    let _ = writeln!(
        s,
        "  curl {p}/whoami                       # a reader answers"
    );
    if c.read_your_writes {
        // With --lag the plain read shows the old value and the one with the token the new.
        let _ = writeln!(
            s,
            "  curl -c jar -X PUT --data 'hello again' {p}/kv/greeting   # keeps the token cookie"
        );
        let _ = writeln!(
            s,
            "  curl {p}/kv/greeting                  # without it: a reader, maybe stale"
        );
        let _ = writeln!(
            s,
            "  curl -b jar {p}/kv/greeting           # with it: your write"
        );
    }
    let _ = writeln!(s, "  curl {}/v1/topology", c.election_url);
    if let Some(n) = c.nodes.first() {
        let _ = writeln!(
            s,
            "  curl {}{}   # is {} the writer? (true/false)",
            n.url,
            c.api.distributor_path(),
            n.name
        );
    }
    let _ = writeln!(s, "  curl {}/metrics", c.admin_url);
    if let Some(n) = c.nodes.first() {
        let _ = writeln!(
            s,
            "  curl -X POST --data false {}/admin/ready   # make {} unready",
            n.url, n.name
        );
    }
    let _ = writeln!(
        s,
        "  curl -X POST -H \"Authorization: Bearer $(cat {})\" --data '{{}}' {}/v1/switchover",
        c.token_file.display(),
        c.election_url
    );
    let _ = writeln!(
        s,
        "  kill -9 <pid of the writer>            # watch the failover below"
    );
    let _ = writeln!(
        s,
        "  {} run --url {p} --rate 500 --duration 30s",
        c.bins.loadtest.display()
    );
    let _ = writeln!(s);
    s
}
