//! The device's temperature: the hottest `class/thermal/thermal_zone*/temp` (INTERFACE.md
//! section 3), which the kernel gives in millidegrees Celsius.

use std::io;
use std::path::Path;

use super::{read_attr, sorted_entries, Problem, Reading};

/// Reads every thermal zone and returns the highest temperature in °C.
///
/// `None` when the device has no thermal zones (or none can be read): it then never counts as too
/// hot. Sensors that are not ready fail their read (EAGAIN, ENODATA, EINVAL are all seen on real
/// boards); those zones are skipped with a problem and the rest still count.
pub fn read_max_temp(sysfs: &Path) -> Reading<Option<f64>> {
    let dir = sysfs.join("class/thermal");
    let entries = match sorted_entries(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Reading::ok(None),
        Err(e) => {
            return Reading {
                value: None,
                problem: Some(Problem::io(&dir, &e)),
            }
        }
    };
    let mut max: Option<f64> = None;
    let mut problem = None;
    let zones = entries.iter().filter(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("thermal_zone"))
    });
    for zone in zones {
        let path = zone.join("temp");
        let result = match read_attr(&path) {
            Ok(text) => text
                .parse::<i64>()
                .map_err(|_| Problem::malformed(&path, &text)),
            Err(e) => Err(Problem::io(&path, &e)),
        };
        match result {
            Ok(milli) => {
                let c = milli as f64 / 1000.0;
                max = Some(max.map_or(c, |m| m.max(c)));
            }
            Err(p) => {
                problem.get_or_insert(p);
            }
        }
    }
    Reading {
        value: max,
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake;
    use super::*;

    #[test]
    fn hottest_zone_in_degrees() {
        let dir = tempfile::tempdir().unwrap();
        fake::write(dir.path(), "class/thermal/thermal_zone0/temp", "41000");
        fake::write(dir.path(), "class/thermal/thermal_zone1/temp", "63250");
        fake::write(dir.path(), "class/thermal/thermal_zone2/temp", "-5000");
        // Cooling devices live in the same directory and have no temperature.
        fake::write(dir.path(), "class/thermal/cooling_device0/cur_state", "0");
        assert_eq!(read_max_temp(dir.path()), Reading::ok(Some(63.25)));
    }

    #[test]
    fn no_zones_is_unknown_without_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_max_temp(dir.path()), Reading::ok(None));
        std::fs::create_dir_all(dir.path().join("class/thermal")).unwrap();
        assert_eq!(read_max_temp(dir.path()), Reading::ok(None));
    }

    #[test]
    fn a_zone_that_cannot_be_read_is_skipped_with_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        fake::write(dir.path(), "class/thermal/thermal_zone0/temp", "52000");
        fake::unreadable(dir.path(), "class/thermal/thermal_zone1/temp");
        fake::write(dir.path(), "class/thermal/thermal_zone2/temp", "n/a");
        let r = read_max_temp(dir.path());
        assert_eq!(r.value, Some(52.0));
        assert!(r.problem.unwrap().path.ends_with("thermal_zone1/temp"));
    }
}
