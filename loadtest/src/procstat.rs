//! CPU time and resident memory of the system under test, read from `/proc`.

/// Pids whose command line contains `pattern` (never this process or its children).
pub fn find(pattern: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| {
                    let line: String = raw
                        .iter()
                        .map(|b| if *b == 0 { ' ' } else { *b as char })
                        .collect();
                    line.contains(pattern) && !line.contains("horizon-loadtest")
                })
                .unwrap_or(false)
        })
        .collect()
}

/// `(cpu seconds, resident bytes)` summed over `pids`.
pub fn sample(pids: &[u32]) -> (f64, u64) {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut cpu = 0.0;
    let mut rss = 0;
    for pid in pids {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Fields after the command name (which may contain spaces): state is field 3.
            if let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) {
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let utime: f64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0.0);
                let stime: f64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0.0);
                cpu += (utime + stime) / ticks;
            }
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            {
                rss += kb * 1024;
            }
        }
    }
    (cpu, rss)
}
