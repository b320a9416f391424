//! The system's load: the 1-minute load average from `proc/loadavg`. The camera's own encoder
//! and storage work show up here; the gate counts it as `busy` above `conditions.max_load`.

use std::path::Path;

use super::{read_attr, Problem, Reading};

/// Reads the first field of `proc/loadavg` (`0.42 0.30 0.20 1/123 4567`); `None` if it cannot be
/// read or parsed.
pub fn read_load(proc: &Path) -> Reading<Option<f64>> {
    let path = proc.join("loadavg");
    let text = match read_attr(&path) {
        Ok(t) => t,
        Err(e) => {
            return Reading {
                value: None,
                problem: Some(Problem::io(&path, &e)),
            }
        }
    };
    match text.split_whitespace().next().map(str::parse::<f64>) {
        Some(Ok(load)) if load.is_finite() && load >= 0.0 => Reading::ok(Some(load)),
        _ => Reading {
            value: None,
            problem: Some(Problem::malformed(&path, &text)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake;
    use super::*;

    #[test]
    fn first_field_is_the_one_minute_average() {
        let dir = tempfile::tempdir().unwrap();
        fake::write(dir.path(), "loadavg", "1.25 0.80 0.40 2/187 9021");
        assert_eq!(read_load(dir.path()), Reading::ok(Some(1.25)));
    }

    #[test]
    fn missing_or_garbled_is_unknown_with_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let r = read_load(dir.path());
        assert_eq!(r.value, None);
        assert!(r.problem.unwrap().path.ends_with("loadavg"));
        fake::write(dir.path(), "loadavg", "");
        assert!(read_load(dir.path()).problem.is_some());
    }
}
