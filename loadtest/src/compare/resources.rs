//! What the comparison reads from, and asks of, the machine: the open-file limit that `--idle`
//! needs, the resident memory of a proxy's processes, and the CPU and kernel for the report.

use procfs::process::Status;
use procfs::Current;

use super::report::Machine;

/// Raises the soft open-file limit to the hard one (every idle connection is a descriptor here)
/// and returns the limit in force.
pub fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX)
        .or_else(|_| rlimit::Resource::NOFILE.get().map(|(soft, _)| soft))
        .unwrap_or(1024)
}

/// VmRSS of `pid` and of its direct children (nginx workers), KiB.
pub fn rss_tree_kib(pid: u32) -> u64 {
    let (Ok(root), Ok(all)) = (i32::try_from(pid), procfs::process::all_processes()) else {
        return 0;
    };
    // A process that ends while /proc is walked is simply not counted.
    tree_rss_kib(root, all.flatten().filter_map(|p| p.status().ok()))
}

/// The VmRSS of `root` and of the processes whose parent it is, KiB; processes without one
/// (zombies) count nothing.
fn tree_rss_kib(root: i32, procs: impl IntoIterator<Item = Status>) -> u64 {
    procs
        .into_iter()
        .filter(|s| s.pid == root || s.ppid == root)
        .filter_map(|s| s.vmrss)
        .sum()
}

/// This machine, with the `nginx -v` of the nginx measured.
pub fn machine(nginx: String) -> Machine {
    let cpu = procfs::CpuInfo::current()
        .ok()
        .and_then(|c| c.model_name(0).map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    // procfs's kernel version keeps the numbers only; the report shows the release as is.
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    Machine {
        cpu,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        kernel,
        nginx,
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use procfs::FromRead;

    use super::*;
    use crate::procs::signal_pid;

    /// /proc/<pid>/status as Linux 6 writes it, less the lines after the signal masks.
    fn status(pid: i32, ppid: i32, rss: Option<u64>) -> Status {
        let rss = rss
            .map(|kib| format!("VmHWM:\t{:>8} kB\nVmRSS:\t{kib:>8} kB\n", kib * 2))
            .unwrap_or_default();
        let text = format!(
            "Name:\tnginx\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{pid}\nNgid:\t0\n\
             Pid:\t{pid}\nPPid:\t{ppid}\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n\
             FDSize:\t64\nGroups:\t \nVmPeak:\t   12000 kB\nVmSize:\t   11000 kB\n{rss}\
             Threads:\t1\nSigQ:\t0/96363\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n\
             SigBlk:\t0000000000000000\nSigIgn:\t0000000000001000\nSigCgt:\t0000000188004a07\n\
             CapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n"
        );
        Status::from_read(text.as_bytes()).unwrap()
    }

    #[test]
    fn the_tree_is_the_process_and_its_children_in_kib() {
        let procs = [
            status(1, 0, Some(10_000)),
            status(100, 1, Some(3_000)),
            status(101, 100, Some(700)),
            status(102, 100, Some(800)),
            status(103, 101, Some(50_000)),
            status(104, 100, None),
        ];
        // The master, its two workers with memory and a zombie; not the grandchild, not init.
        assert_eq!(tree_rss_kib(100, procs), 4_500);
    }

    #[test]
    fn reads_the_tree_of_a_real_process() {
        let mut parent = Command::new("sh")
            .args(["-c", "sleep 60 & sleep 60 & wait"])
            .spawn()
            .unwrap();
        let root = parent.id() as i32;
        // Asleep, they are past exec and loading: their RSS no longer moves.
        let children = || -> Vec<Status> {
            procfs::process::all_processes()
                .unwrap()
                .flatten()
                .filter_map(|p| p.status().ok())
                .filter(|s| s.ppid == root && s.name == "sleep" && s.state.starts_with('S'))
                .collect()
        };
        let mut kids = children();
        for _ in 0..200 {
            if kids.len() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            kids = children();
        }
        let own = procfs::process::Process::new(root)
            .unwrap()
            .status()
            .unwrap();
        let total = rss_tree_kib(parent.id());
        for k in &kids {
            let _ = signal_pid(k.pid as u32, libc::SIGKILL);
        }
        let _ = parent.kill();
        let _ = parent.wait();
        assert_eq!(kids.len(), 2, "sh started its two sleeps");
        let kids_rss: u64 = kids.iter().map(|k| k.vmrss.unwrap()).sum();
        assert_eq!(total, own.vmrss.unwrap() + kids_rss);
    }

    #[test]
    fn raising_the_open_file_limit_reaches_the_hard_limit() {
        let (_, hard) = rlimit::Resource::NOFILE.get().unwrap();
        rlimit::Resource::NOFILE.set(256.min(hard), hard).unwrap();
        let limit = raise_nofile();
        let (soft, _) = rlimit::Resource::NOFILE.get().unwrap();
        assert_eq!((limit, soft), (hard, hard));
    }
}
