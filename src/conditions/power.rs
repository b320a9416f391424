//! Charging and battery level from `class/power_supply` (INTERFACE.md section 3).
//!
//! Charging: any supply whose `type` is not `Battery` with `online` = 1, or a `Battery` whose
//! `status` is `Charging` or `Full`. Battery level: `capacity` of the `Battery`.

use std::io;
use std::path::Path;

use super::{read_attr, sorted_entries, Problem, Reading};

/// What the power supplies say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Power {
    /// On external power; `None` when the supplies that could say so cannot be read.
    pub charging: Option<bool>,
    /// The battery's `capacity`; `None` without a battery or when it cannot be read.
    pub battery_percent: Option<u8>,
}

/// Reads `sysfs/class/power_supply/*`.
///
/// A device with no power supplies at all (no directory, or an empty one) runs from mains:
/// charging, no battery. A supply whose attributes cannot be read makes charging unknown unless
/// another supply already shows external power. A missing optional attribute (`online`,
/// `status`, `capacity`) is not a problem: the driver does not report it, so it is no evidence.
pub fn read_power(sysfs: &Path) -> Reading<Power> {
    let dir = sysfs.join("class/power_supply");
    let supplies = match sorted_entries(&dir) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Reading {
                value: Power {
                    charging: None,
                    battery_percent: None,
                },
                problem: Some(Problem::io(&dir, &e)),
            }
        }
    };
    let mut own = 0;
    let mut external = Some(false);
    let mut battery_percent = None;
    let mut problem = None;
    for supply in &supplies {
        let Some(s) = read_supply(supply, &mut problem) else {
            continue;
        };
        own += 1;
        external = match (external, s.external_power) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            // An unreadable supply might be the charger.
            (None, _) | (_, None) => None,
            _ => Some(false),
        };
        // With several batteries, the lowest decides: it is the one that runs out.
        if let Some(c) = s.capacity {
            battery_percent = Some(battery_percent.map_or(c, |b: u8| b.min(c)));
        }
    }
    // Nothing of the camera's own (and nothing unreadable): it runs from mains.
    let charging = if own == 0 && problem.is_none() {
        Some(true)
    } else {
        external
    };
    Reading {
        value: Power {
            charging,
            battery_percent,
        },
        problem,
    }
}

/// What one of the camera's own supplies says; `None` where it cannot be read.
#[derive(Debug)]
struct Supply {
    external_power: Option<bool>,
    capacity: Option<u8>,
}

/// Reads one supply; `None` when it is not the camera's own. The first unreadable attribute goes
/// to `problem`; a bad `capacity` does not hide what `status` says, and vice versa.
fn read_supply(dir: &Path, problem: &mut Option<Problem>) -> Option<Supply> {
    let mut attr = |name: &str| match optional_attr(&dir.join(name)) {
        Ok(v) => Ok(v),
        Err(p) => {
            problem.get_or_insert(p);
            Err(())
        }
    };
    // Peripherals' batteries (a Bluetooth remote, a HID device) have `scope` = Device; they say
    // nothing about the camera's own power, so they are left out.
    if attr("scope").ok().flatten().as_deref() == Some("Device") {
        return None;
    }
    let kind = match attr("type") {
        Ok(Some(kind)) => kind,
        Ok(None) => {
            // Every supply has a type; without it this one might be the charger.
            problem.get_or_insert(Problem {
                path: dir.join("type"),
                reason: "missing".into(),
            });
            return Some(Supply {
                external_power: None,
                capacity: None,
            });
        }
        Err(()) => {
            return Some(Supply {
                external_power: None,
                capacity: None,
            })
        }
    };
    if kind != "Battery" {
        return Some(Supply {
            external_power: attr("online").ok().map(|o| o.as_deref() == Some("1")),
            capacity: None,
        });
    }
    let external_power = attr("status")
        .ok()
        .map(|s| matches!(s.as_deref(), Some("Charging" | "Full")));
    let capacity = match attr("capacity") {
        Ok(Some(text)) => match text.parse::<u16>() {
            // Fuel gauges can overshoot a little while calibrating.
            Ok(n) => Some(n.min(100) as u8),
            Err(_) => {
                problem.get_or_insert(Problem::malformed(&dir.join("capacity"), &text));
                None
            }
        },
        _ => None,
    };
    Some(Supply {
        external_power,
        capacity,
    })
}

/// An attribute the driver may not provide: absent is `None`, unreadable is a problem.
fn optional_attr(path: &Path) -> Result<Option<String>, Problem> {
    match read_attr(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Problem::io(path, &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake;
    use super::*;

    fn power(charging: Option<bool>, battery_percent: Option<u8>) -> Power {
        Power {
            charging,
            battery_percent,
        }
    }

    #[test]
    fn no_supplies_means_mains_powered() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_power(dir.path()), Reading::ok(power(Some(true), None)));
        std::fs::create_dir_all(dir.path().join("class/power_supply")).unwrap();
        assert_eq!(read_power(dir.path()), Reading::ok(power(Some(true), None)));
    }

    #[test]
    fn battery_discharging_without_charger_is_not_charging() {
        let dir = tempfile::tempdir().unwrap();
        let bat = [("status", "Discharging"), ("capacity", "81")];
        fake::supply(dir.path(), "BAT0", "Battery", &bat);
        fake::supply(dir.path(), "usb", "USB", &[("online", "0")]);
        assert_eq!(
            read_power(dir.path()),
            Reading::ok(power(Some(false), Some(81)))
        );
    }

    #[test]
    fn a_charger_online_means_charging_whatever_the_battery_says() {
        let dir = tempfile::tempdir().unwrap();
        // "Not charging": charger present but charging paused (e.g. by temperature).
        let bat = [("status", "Not charging"), ("capacity", "15")];
        fake::supply(dir.path(), "battery", "Battery", &bat);
        fake::supply(dir.path(), "ac", "Mains", &[("online", "1")]);
        assert_eq!(
            read_power(dir.path()),
            Reading::ok(power(Some(true), Some(15)))
        );
    }

    #[test]
    fn battery_charging_or_full_means_charging() {
        for status in ["Charging", "Full"] {
            let dir = tempfile::tempdir().unwrap();
            let bat = [("status", status), ("capacity", "100")];
            fake::supply(dir.path(), "battery", "Battery", &bat);
            assert_eq!(
                read_power(dir.path()),
                Reading::ok(power(Some(true), Some(100))),
                "{status}"
            );
        }
    }

    #[test]
    fn mains_only_supply_offline_is_not_charging() {
        let dir = tempfile::tempdir().unwrap();
        fake::supply(dir.path(), "ac", "Mains", &[("online", "0")]);
        assert_eq!(
            read_power(dir.path()),
            Reading::ok(power(Some(false), None))
        );
    }

    #[test]
    fn unreadable_supply_makes_charging_unknown() {
        let dir = tempfile::tempdir().unwrap();
        fake::supply(
            dir.path(),
            "battery",
            "Battery",
            &[("status", "Discharging")],
        );
        fake::supply(dir.path(), "usb", "USB", &[]);
        fake::unreadable(dir.path(), "class/power_supply/usb/online");
        let r = read_power(dir.path());
        assert_eq!(r.value, power(None, None));
        let p = r.problem.unwrap();
        assert!(p.path.ends_with("class/power_supply/usb/online"), "{p}");
    }

    #[test]
    fn supplies_present_but_unreadable_are_unknown_not_mains() {
        let dir = tempfile::tempdir().unwrap();
        fake::unreadable(dir.path(), "class/power_supply/battery/type");
        let r = read_power(dir.path());
        assert_eq!(r.value, power(None, None));
        assert!(r.problem.unwrap().path.ends_with("battery/type"));
    }

    #[test]
    fn unreadable_supply_does_not_hide_a_charger_that_is_online() {
        let dir = tempfile::tempdir().unwrap();
        fake::supply(dir.path(), "ac", "Mains", &[("online", "1")]);
        fake::supply(dir.path(), "battery", "Battery", &[("status", "Charging")]);
        fake::unreadable(dir.path(), "class/power_supply/battery/capacity");
        let r = read_power(dir.path());
        assert_eq!(r.value, power(Some(true), None));
        assert!(r.problem.is_some());
    }

    #[test]
    fn garbage_capacity_is_a_problem_not_a_number() {
        let dir = tempfile::tempdir().unwrap();
        let bat = [("status", "Discharging"), ("capacity", "lots")];
        fake::supply(dir.path(), "battery", "Battery", &bat);
        let r = read_power(dir.path());
        // The status still counts.
        assert_eq!(r.value, power(Some(false), None));
        assert!(r.problem.unwrap().reason.contains("lots"));
    }

    #[test]
    fn only_a_peripheral_battery_means_mains_powered() {
        let dir = tempfile::tempdir().unwrap();
        let remote = [
            ("scope", "Device"),
            ("status", "Discharging"),
            ("capacity", "5"),
        ];
        fake::supply(dir.path(), "hid-remote", "Battery", &remote);
        assert_eq!(read_power(dir.path()), Reading::ok(power(Some(true), None)));
    }

    #[test]
    fn a_peripheral_battery_is_not_the_cameras() {
        let dir = tempfile::tempdir().unwrap();
        let remote = [
            ("scope", "Device"),
            ("status", "Charging"),
            ("capacity", "5"),
        ];
        fake::supply(dir.path(), "hid-remote", "Battery", &remote);
        let bat = [("status", "Discharging"), ("capacity", "64")];
        fake::supply(dir.path(), "battery", "Battery", &bat);
        assert_eq!(
            read_power(dir.path()),
            Reading::ok(power(Some(false), Some(64)))
        );
    }
}
