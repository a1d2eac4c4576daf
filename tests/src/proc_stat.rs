//! What `/proc/<pid>/stat` says of a process or thread: its name and CPU time.

use std::{path::Path, time::Duration};

/// A process's (or kernel thread's) name and CPU time.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcStat {
    /// The command name (`comm`), e.g. `lb` or `napi/p0-8193`.
    pub name: String,
    /// Time in user mode.
    pub user: Duration,
    /// Time in the kernel.
    pub system: Duration,
}

/// Reads a `stat` file (`/proc/<pid>/stat`); `None` if it is gone or unreadable.
pub fn read(stat: &Path) -> Option<ProcStat> {
    parse(&std::fs::read_to_string(stat).ok()?)
}

/// The name and CPU time in the text of a `stat` file.
pub fn parse(stat: &str) -> Option<ProcStat> {
    // The name is in parentheses and may hold spaces and parentheses: it ends at the last
    // `)`. After it, the state is the first field; utime and stime are the 12th and 13th.
    let (_, rest) = stat.split_once(" (")?;
    let (name, after) = rest.rsplit_once(") ")?;
    let mut ticks = after.split_whitespace().skip(11).map(str::parse::<u64>);
    let (Some(Ok(user)), Some(Ok(system))) = (ticks.next(), ticks.next()) else {
        return None;
    };
    // SAFETY: sysconf with a constant name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let time = |ticks: u64| Duration::from_secs_f64(ticks as f64 / hz);
    Some(ProcStat {
        name: name.to_owned(),
        user: time(user),
        system: time(system),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_with_spaces_and_parentheses_and_its_times() {
        // SAFETY: sysconf with a constant name.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let line = format!(
            "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 {} {} 0 0 20 0 1 0",
            hz as u64 * 3,
            hz as u64
        );
        let stat = parse(&line).expect("parsed");
        assert_eq!(stat.name, "a (b) c");
        assert_eq!(stat.user, Duration::from_secs(3));
        assert_eq!(stat.system, Duration::from_secs(1));
        assert_eq!(parse("42 (lb) S 1 2"), None);
    }

    #[test]
    fn this_process_has_a_stat() {
        let stat = read(Path::new("/proc/self/stat")).expect("our own stat");
        assert!(!stat.name.is_empty());
    }
}
