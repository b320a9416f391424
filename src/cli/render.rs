//! Human output: pure functions from the server's JSON to text, so they are tested without a
//! daemon. What they render are the API's own types ([`crate::wire`], the ones the daemon
//! serializes), read leniently (unknown fields ignored, missing ones defaulted, codes as
//! strings) so an older CLI still reads a newer daemon's answers.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

pub use crate::wire::{
    Conditions, Current, FileView, HistoryView, ItemView, Privacy as PrivacyView, Skipped,
    Status as StatusView, Uplink as UplinkView,
};

/// A `blocked_by` value in words. The names are the gate's own, matched exhaustively: a new
/// block does not compile until it has its words here. A name this CLI does not know (a newer
/// daemon) is shown as it is.
pub fn block_words(code: &str) -> String {
    use crate::gate::Block;
    let Some(block) = Block::ALL.into_iter().find(|b| b.as_str() == code) else {
        return code.to_string();
    };
    match block {
        Block::AutoUploadOff => "automatic upload is off (settings: auto_upload)",
        Block::NotCharging => "not charging",
        Block::BatteryLow => "battery low",
        Block::NetworkNotAllowed => "the current network is not allowed (settings: network)",
        Block::MeteredNetwork => "the Wi-Fi is metered (settings: network; `PUT /v1/network`)",
        Block::Offline => "offline",
        Block::NoInternet => "the Wi-Fi has no internet: the server cannot be reached through it",
        Block::CaptivePortal => {
            "the network answers for the server (a captive portal: sign in, or use another network)"
        }
        Block::Recording => "the camera is recording",
        Block::Busy => "the camera is busy",
        Block::TooHot => "too hot",
        Block::OutsideSchedule => "outside the hours set for uploads (settings: schedule)",
        Block::DataBudgetUsed => {
            "today's cellular data for uploads is used up (settings: cellular_daily_mib)"
        }
    }
    .to_string()
}

/// A daemon state in words (the daemon's own names, matched exhaustively like the blocks).
pub fn state_words(state: &str) -> String {
    use crate::events::DaemonState;
    let Some(s) = DaemonState::ALL.into_iter().find(|s| s.as_str() == state) else {
        return state.to_string();
    };
    match s {
        DaemonState::Unpaired => "unpaired: pair with the app (or `cambackup pair`)",
        DaemonState::Paused => "paused by the user (`cambackup resume` continues)",
        DaemonState::Waiting => "waiting: files to upload, conditions not met",
        DaemonState::Idle => "idle: nothing to upload",
        DaemonState::Uploading => "uploading",
        DaemonState::Unauthorized => "unauthorized: the server refused the token; pair again",
        DaemonState::SubscriptionInactive => "subscription inactive: the server refuses uploads",
        DaemonState::MediaUnavailable => "media unavailable: is the card in?",
    }
    .to_string()
}

/// `status`.
pub fn status(s: &StatusView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "state:       {}", state_words(&s.state));
    if !s.blocked_by.is_empty() {
        let words: Vec<String> = s.blocked_by.iter().map(|b| block_words(b)).collect();
        let _ = writeln!(out, "blocked by:  {}", words.join(", "));
    }
    if !s.manual_blocked_by.is_empty() {
        let words: Vec<String> = s.manual_blocked_by.iter().map(|b| block_words(b)).collect();
        let _ = writeln!(out, "manual uploads blocked by: {}", words.join(", "));
    }
    if let Some(u) = &s.unreachable {
        let _ = writeln!(out, "network:     {}", u.message);
    }
    let q = &s.queue;
    let _ = writeln!(
        out,
        "queue:       {} pending, {} uploading, {} failed, {} done ({} to send, {} sent)",
        q.pending,
        q.uploading,
        q.failed,
        q.done,
        bytes(q.bytes_remaining),
        bytes(q.bytes_done)
    );
    if let Some(c) = &s.card {
        let _ = writeln!(
            out,
            "card:        {} of {} backed up ({} of {})",
            c.files_backed_up,
            crate::words::count(c.files_total, "file", "files"),
            bytes(c.bytes_backed_up),
            bytes(c.bytes_total)
        );
        let format = if c.safe_to_format {
            "safe: every photo and video on the card is backed up".to_string()
        } else if c.to_go.files > 0 {
            format!(
                "not yet: {} ({}) to go",
                crate::words::count(c.to_go.files, "file", "files"),
                bytes(c.to_go.bytes)
            )
        } else if !s.media_available {
            "not yet: the card is missing".to_string()
        } else {
            "not yet: the card is being checked".to_string()
        };
        let _ = writeln!(out, "format:      {format}");
    }
    if let Some(k) = s.skipped.as_ref().and_then(skipped) {
        let _ = writeln!(out, "left out:    {k} (`cambackup why PATH` says why)");
    }
    if s.cellular_bytes_today > 0 {
        let _ = writeln!(
            out,
            "cellular:    {} sent today",
            bytes(s.cellular_bytes_today)
        );
    }
    if let Some(t) = s.last_success_at {
        let _ = writeln!(out, "last upload: {}", local_time(t));
    }
    if let Some(t) = s.next_attempt_at {
        let _ = writeln!(out, "next retry:  {}", local_time(t));
    }
    if let Some(c) = &s.conditions {
        let _ = writeln!(out, "device:      {}", conditions(c));
    }
    if let Some(u) = &s.uplink {
        let _ = writeln!(out, "uplink:      {}", uplink(u));
    }
    let uploads: Vec<&Current> = if s.uploads.is_empty() {
        s.current.iter().collect()
    } else {
        s.uploads.iter().collect()
    };
    for c in uploads {
        let _ = writeln!(out, "uploading:   {}", progress_line(c));
    }
    for a in &s.attention {
        let _ = writeln!(out, "needs you:   {} ({})", a.message, a.code);
    }
    out
}

/// `status.skipped` in words; `None` when the scan left nothing out.
pub fn skipped(k: &Skipped) -> Option<String> {
    use crate::words::count;
    let parts: Vec<String> = [
        (
            k.excluded_type,
            "file not a photo or video",
            "files not photos or videos",
        ),
        (k.excluded_path, "excluded path", "excluded paths"),
        (k.link, "link", "links"),
        (k.not_regular_file, "special file", "special files"),
        (k.unreadable, "unreadable entry", "unreadable entries"),
    ]
    .into_iter()
    .filter(|(n, _, _)| *n > 0)
    .map(|(n, one, many)| count(n, one, many))
    .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// `why`: one file's state and why.
pub fn why(f: &FileView) -> String {
    let mut out = String::new();
    let given = match f.given_as.as_str() {
        "card_path" => "an absolute path on the card",
        _ => "a storage path",
    };
    let _ = writeln!(out, "{} (given as {given})", f.storage_path);
    let state = match f.id {
        Some(id) => format!("{} (queue item #{id})", f.state),
        None => f.state.clone(),
    };
    let _ = writeln!(out, "state:      {state}");
    let _ = writeln!(out, "why:        {} ({})", f.reason.message, f.reason.code);
    if f.id.is_some() {
        let size = f.size.unwrap_or(0);
        let _ = writeln!(
            out,
            "attempts:   {}; {} of {} sent",
            f.attempts,
            bytes(f.bytes_sent),
            bytes(size)
        );
    } else if let Some(size) = f.size {
        let _ = writeln!(out, "size:       {}", bytes(size));
    }
    if let Some(e) = &f.last_error {
        let _ = writeln!(out, "last error: {e}");
    }
    if let Some(t) = f.next_attempt_at {
        let _ = writeln!(out, "retry at:   {}", local_time(t));
    }
    if let Some(t) = f.completed_at {
        let _ = writeln!(out, "done at:    {}", local_time(t));
    }
    if let Some(t) = f.freed_at {
        let _ = writeln!(out, "freed at:   {}", local_time(t));
    }
    let on_card = if f.on_card {
        "on the card"
    } else {
        "not on the card"
    };
    let card = match (&f.card_label, &f.card) {
        (Some(l), Some(s)) => format!("{on_card}; found on card {l} ({s})"),
        (None, Some(s)) => format!("{on_card}; found on card {s}"),
        _ => on_card.to_string(),
    };
    let _ = writeln!(out, "card:       {card}");
    out
}

/// Where uploads leave, how connections are held there, and whether it is metered and why.
pub fn uplink(u: &UplinkView) -> String {
    let mut line = match (&u.interface, u.binding.as_deref()) {
        (Some(i), Some("device")) => {
            format!("uploads leave through {i} only (bound to the interface)")
        }
        (Some(i), Some("address")) => {
            format!("uploads leave through {i} only (bound to its address; the kernel refuses interface binding)")
        }
        (Some(i), None) => {
            format!("uploads go to this device only (loopback endpoint); {i} is approved")
        }
        _ => "no upload connection is made now".to_string(),
    };
    let metered = match (u.metered, u.metered_because.as_deref()) {
        (true, Some("cellular")) => "metered (cellular)".to_string(),
        (true, Some("app")) => "metered (the app says so)".to_string(),
        (true, Some("firmware_flag")) => "metered (the camera's firmware says so)".to_string(),
        (true, Some("android_dhcp")) => "metered (an Android hotspot)".to_string(),
        (true, Some("iphone_gateway")) => "metered (looks like an iPhone hotspot)".to_string(),
        (true, Some("apple_hotspot_beacon")) => {
            "metered (an iPhone hotspot, by its beacon)".to_string()
        }
        (true, Some("network_cost_beacon")) => {
            "metered (the hotspot's beacon says its data costs)".to_string()
        }
        (true, _) => "metered".to_string(),
        (false, Some("app")) => "not metered (the app says so)".to_string(),
        (false, _) => "not metered".to_string(),
    };
    if let Some(n) = &u.network {
        let _ = write!(line, "; {n}");
        if let Some(name) = &u.network_name {
            let _ = write!(line, " {:?}", name.ssid);
        }
        let _ = write!(line, ", {metered}");
    }
    line
}

fn conditions(c: &Conditions) -> String {
    let mut parts = Vec::new();
    parts.push(match &c.interface {
        Some(i) => format!("{} ({i})", c.network),
        None => c.network.clone(),
    });
    match c.charging {
        Some(true) => parts.push("charging".into()),
        Some(false) => parts.push("on battery".into()),
        None => {}
    }
    if let Some(b) = c.battery_percent {
        parts.push(format!("battery {b}%"));
    }
    if let Some(t) = c.temp_c {
        parts.push(format!("{t:.1} °C"));
    }
    if c.recording {
        parts.push("recording".into());
    }
    parts.join(", ")
}

/// One upload's progress: path, percent, sizes, rate and ETA.
pub fn progress_line(c: &Current) -> String {
    let pct = if c.bytes_total == 0 {
        100.0
    } else {
        c.bytes_sent as f64 * 100.0 / c.bytes_total as f64
    };
    let mut line = format!(
        "#{} {}  {pct:.0}% ({} of {})",
        c.id,
        c.storage_path,
        bytes(c.bytes_sent),
        bytes(c.bytes_total)
    );
    if c.rate_bps > 0 {
        let _ = write!(line, " at {}", rate(c.rate_bps));
    }
    if let Some(eta) = c.eta_secs {
        let _ = write!(line, ", about {} left", duration(eta));
    }
    line
}

/// `queue`: a table.
pub fn queue(items: &[ItemView]) -> String {
    if items.is_empty() {
        return "the queue is empty\n".into();
    }
    let rows: Vec<[String; 6]> = items
        .iter()
        .map(|i| {
            let state = if i.manual {
                format!("{} (manual)", i.state)
            } else {
                i.state.clone()
            };
            [
                i.id.to_string(),
                state,
                bytes(i.size),
                i.attempts.to_string(),
                i.storage_path.clone(),
                i.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &["ID", "STATE", "SIZE", "TRIES", "PATH", "LAST ERROR"],
        &rows,
    )
}

/// `history`: a table, newest first as the server sends it.
pub fn history(entries: &[HistoryView]) -> String {
    if entries.is_empty() {
        return "nothing uploaded yet (or the history was erased)\n".into();
    }
    let rows: Vec<[String; 4]> = entries
        .iter()
        .map(|e| {
            [
                local_time(e.completed_at),
                bytes(e.size),
                // When, and on what: `2026-12-07 10:00 (receipt)`.
                match (e.freed_at, &e.freed_on) {
                    (None, _) => "-".into(),
                    (Some(t), None) => local_time(t),
                    (Some(t), Some(on)) => format!("{} ({on})", local_time(t)),
                },
                e.storage_path.clone(),
            ]
        })
        .collect();
    table(&["COMPLETED", "SIZE", "FREED", "PATH"], &rows)
}

/// `privacy`: what leaves the device, and where to.
pub fn privacy(p: &PrivacyView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Sent with each upload, and nothing else that identifies you or the device:"
    );
    let width = p.fields_sent.iter().map(String::len).max().unwrap_or(0);
    for f in &p.fields_sent {
        let value = match (f.as_str(), p.values.get(f).cloned().flatten()) {
            (_, Some(v)) => v,
            ("storage_path", None) => "the file's path under the media root".into(),
            ("user_id", None) => "(not paired: nothing is sent)".into(),
            (_, None) => "(none)".into(),
        };
        let _ = writeln!(out, "  {f:width$}  {value}");
    }
    let _ = writeln!(out, "Sent to:        {}", p.endpoint);
    let _ = writeln!(out, "Transport:      {}", p.transport);
    let _ = writeln!(out, "Sent only when: {}", p.sent_only_when);
    if let Some(l) = &p.leaves_through {
        let _ = writeln!(out, "Leaves:         {l}");
    }
    let sorted: BTreeMap<String, Value> = p.settings.0.iter().cloned().collect();
    let _ = writeln!(out, "Your settings:  {}", settings_inline(&sorted));
    let _ = writeln!(
        out,
        "History:        kept {} on this device; `cambackup unpair` erases it",
        crate::words::count(p.history_days.into(), "day", "days")
    );
    out
}

fn settings_inline(s: &BTreeMap<String, Value>) -> String {
    s.iter()
        .map(|(k, v)| format!("{k}={}", setting_value(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A setting's value as `settings` prints it and accepts it: bools and words bare, lists
/// comma-separated.
pub fn setting_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(setting_value).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// An `events` line.
pub fn event_line(name: &str, data: &Value, at_unix: i64) -> String {
    let time = local_time(at_unix);
    let time = time.split(' ').nth(1).unwrap_or(&time).to_string();
    let s = |k: &str| {
        data.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let n = |k: &str| data.get(k).and_then(Value::as_u64).unwrap_or(0);
    match name {
        "state" => {
            let blocks: Vec<String> = data
                .get("blocked_by")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(block_words)
                        .collect()
                })
                .unwrap_or_default();
            let mut line = format!("{time} state {}", s("state"));
            if !blocks.is_empty() {
                let _ = write!(line, " (blocked by: {})", blocks.join(", "));
            }
            line
        }
        "progress" => {
            let c = Current {
                id: data.get("id").and_then(Value::as_i64).unwrap_or(0),
                storage_path: s("storage_path"),
                bytes_sent: n("bytes_sent"),
                bytes_total: n("bytes_total"),
                rate_bps: n("rate_bps"),
                eta_secs: None,
            };
            format!("{time} progress {}", progress_line(&c))
        }
        "item" => {
            let mut line = format!(
                "{time} item #{} {} {}",
                data.get("id").and_then(Value::as_i64).unwrap_or(0),
                s("storage_path"),
                s("state")
            );
            if let Some(e) = data.get("error").and_then(Value::as_str) {
                let _ = write!(line, " ({e})");
            }
            line
        }
        "freed" => format!(
            "{time} freed #{} {} ({} deleted from the card, backed up)",
            data.get("id").and_then(Value::as_i64).unwrap_or(0),
            s("storage_path"),
            bytes(n("size"))
        ),
        other => format!("{time} {other} {data}"),
    }
}

/// `space`: the card, the rules, the last pass; with `files`, each file a pass would free and
/// why each other one is kept (`--dry-run`).
pub fn space(v: &Value, files: bool) -> String {
    let mut out = String::new();
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    match v.get("card").filter(|c| !c.is_null()) {
        Some(c) => {
            let (free, total) = (n(c, "free_bytes"), n(c, "total_bytes"));
            let pct = (free * 100).checked_div(total).unwrap_or(0);
            let _ = writeln!(
                out,
                "Card:       {} free of {} ({pct} %)",
                bytes(free),
                bytes(total)
            );
        }
        None => {
            let _ = writeln!(out, "Card:       its space cannot be read (is it there?)");
        }
    }
    let r = &v["rules"];
    let below = r.get("free_space_below_percent").and_then(Value::as_u64);
    let _ = writeln!(
        out,
        "Rules:      free_space = {}; {}",
        s(r, "free_space"),
        match below {
            Some(p) => format!(
                "below {p} % free, delete backed-up files oldest first up to {} %; keep {} \
                 days; verified by {}; delete with {}",
                p + n(r, "margin_percent"),
                n(r, "keep_days"),
                s(r, "free_space_verify"),
                s(r, "delete_with")
            ),
            None =>
                "this camera does not free space (media.free_space_below_percent is unset)".into(),
        }
    );
    let holds: Vec<String> = v["held_by"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let would = v["would_free"].as_array().cloned().unwrap_or_default();
    let would_bytes: u64 = would.iter().map(|f| n(f, "size")).sum();
    if holds.is_empty() {
        let _ = writeln!(
            out,
            "Now:        would free {}, {} (need {})",
            crate::words::count(would.len() as u64, "file", "files"),
            bytes(would_bytes),
            bytes(n(v, "need_bytes"))
        );
    } else {
        let _ = writeln!(out, "Now:        nothing is freed ({})", holds.join(", "));
    }
    if let Some(kept) = v["kept_by_reason"].as_object().filter(|k| !k.is_empty()) {
        let list: Vec<String> = kept.iter().map(|(k, c)| format!("{k} {c}")).collect();
        let _ = writeln!(out, "Kept:       {}", list.join(", "));
    }
    if let Some(p) = v.get("last_pass").filter(|p| !p.is_null()) {
        let _ = writeln!(
            out,
            "Last pass:  {}: freed {}, {}",
            local_time(p["at"].as_i64().unwrap_or(0)),
            crate::words::count(n(p, "freed_files"), "file", "files"),
            bytes(n(p, "freed_bytes"))
        );
        for f in p["failures"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "  failed:   {}", f.as_str().unwrap_or(""));
        }
    }
    if files {
        out.push_str(&space_files(v, &would));
    }
    out
}

/// `space --dry-run`'s table: each file a pass would free (`would`) and each one kept, and why.
fn space_files(v: &Value, would: &[Value]) -> String {
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let rows: Vec<[String; 4]> = would
        .iter()
        .map(|f| {
            let confirm: Vec<&str> = f["confirm"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            [
                "free".into(),
                bytes(n(f, "size")),
                format!("after {}", confirm.join(" + ")),
                s(f, "storage_path"),
            ]
        })
        .chain(v["kept"].as_array().into_iter().flatten().map(|f| {
            [
                "keep".into(),
                bytes(n(f, "size")),
                s(&f["kept"], "reason"),
                s(f, "storage_path"),
            ]
        }))
        .collect();
    if rows.is_empty() {
        "No backed-up file on the card to free.\n".to_string()
    } else {
        table(&["WHAT", "SIZE", "WHY", "PATH"], &rows)
    }
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
fn table<const N: usize>(head: &[&str; N], rows: &[[String; N]]) -> String {
    let mut width = [0usize; N];
    for (i, h) in head.iter().enumerate() {
        width[i] = h.chars().count();
    }
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:w$}  ", w = width[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(head.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A transfer rate: `850 B/s`, `512.0 KiB/s`, `2.3 MiB/s`.
pub fn rate(bps: u64) -> String {
    format!("{}/s", bytes(bps))
}

/// A duration for an ETA: `45s`, `4m 10s`, `2h 05m`.
pub fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Unix seconds as local time, `2024-05-01 14:03:22 +0200` (UTC when the zone is unknown).
pub fn local_time(unix: i64) -> String {
    // SAFETY: localtime_r only writes the `tm` we own (it reads TZ or /etc/localtime itself).
    let tm = unsafe {
        let t: libc::time_t = unix as libc::time_t;
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            None
        } else {
            Some(tm)
        }
    };
    match tm {
        Some(tm) => {
            let off = tm.tm_gmtoff / 60;
            let sign = if off < 0 { '-' } else { '+' };
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} {sign}{:02}{:02}",
                tm.tm_year + 1900,
                tm.tm_mon + 1,
                tm.tm_mday,
                tm.tm_hour,
                tm.tm_min,
                tm.tm_sec,
                off.abs() / 60,
                off.abs() % 60
            )
        }
        None => {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
            humantime::format_rfc3339_seconds(t).to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(rate(2_411_724), "2.3 MiB/s");
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(250), "4m 10s");
        assert_eq!(duration(7500), "2h 05m");
    }

    #[test]
    fn status_reads_well() {
        let v: StatusView = serde_json::from_value(serde_json::json!({
            "state": "uploading", "blocked_by": ["not_charging", "recording"],
            "queue": {"pending": 3, "uploading": 1, "done": 120, "failed": 1,
                      "bytes_remaining": 1288490188u64, "bytes_done": 32749125632u64},
            "current": {"id": 7, "storage_path": "DCIM/100MEDIA/A.MP4", "bytes_sent": 566231040u64,
                        "bytes_total": 1288490188u64, "rate_bps": 2411724, "eta_secs": 300},
            "conditions": {"charging": true, "battery_percent": 80, "network": "wifi",
                           "interface": "wlan0", "temp_c": 41.5, "recording": false},
            "card": {"files_backed_up": 120, "files_total": 125, "bytes_backed_up": 32749125632u64,
                     "bytes_total": 34037615820u64},
            "last_success_at": 1714565002, "next_attempt_at": null,
            "some_future_field": 1
        }))
        .unwrap();
        let text = status(&v);
        assert!(
            text.contains("card:        120 of 125 files backed up (30.5 GiB of 31.7 GiB)"),
            "{text}"
        );
        assert!(text.contains("last upload: "), "{text}");
        assert!(!text.contains("next retry"), "{text}");
        assert!(
            text.contains("blocked by:  not charging, the camera is recording"),
            "{text}"
        );
        assert!(
            text.contains("3 pending, 1 uploading, 1 failed, 120 done"),
            "{text}"
        );
        assert!(
            text.contains("#7 DCIM/100MEDIA/A.MP4  44% (540.0 MiB of 1.2 GiB) at 2.3 MiB/s, about 5m 00s left"),
            "{text}"
        );
        assert!(
            text.contains("wifi (wlan0), charging, battery 80%, 41.5 °C"),
            "{text}"
        );
    }

    #[test]
    fn status_says_where_uploads_leave_and_why_metered() {
        let v: StatusView = serde_json::from_value(serde_json::json!({
            "state": "waiting", "blocked_by": ["metered_network"],
            "uplink": {"interface": null, "binding": null, "network": "wifi", "families": ["ipv4"],
                       "metered": true, "metered_because": "iphone_gateway", "metered_override": null}
        }))
        .unwrap();
        let text = status(&v);
        assert!(text.contains("blocked by:  the Wi-Fi is metered"), "{text}");
        assert!(
            text.contains("uplink:      no upload connection is made now; wifi, metered (looks like an iPhone hotspot)"),
            "{text}"
        );
        let u = UplinkView {
            interface: Some("wlan0".into()),
            binding: Some("device".into()),
            network: Some("wifi".into()),
            ..Default::default()
        };
        assert_eq!(
            uplink(&u),
            "uploads leave through wlan0 only (bound to the interface); wifi, not metered"
        );
        let u = UplinkView {
            network_name: Some(crate::wire::NetworkName {
                ssid: "iPhone".into(),
                bssid: "02:00:00:00:0c:01".into(),
            }),
            metered: true,
            metered_because: Some("apple_hotspot_beacon".into()),
            ..u
        };
        assert_eq!(
            uplink(&u),
            "uploads leave through wlan0 only (bound to the interface); wifi \"iPhone\", \
             metered (an iPhone hotspot, by its beacon)"
        );
    }

    #[test]
    fn queue_table_aligns() {
        let items = vec![
            ItemView {
                id: 1,
                storage_path: "DCIM/A.JPG".into(),
                size: 2048,
                state: "pending".into(),
                ..Default::default()
            },
            ItemView {
                id: 12,
                storage_path: "DCIM/B.MP4".into(),
                size: 10,
                state: "failed".into(),
                attempts: 3,
                last_error: Some("413 from the server".into()),
                ..Default::default()
            },
        ];
        let t = queue(&items);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "ID  STATE    SIZE     TRIES  PATH        LAST ERROR"
        );
        assert_eq!(lines[1], "1   pending  2.0 KiB  0      DCIM/A.JPG");
        assert_eq!(
            lines[2],
            "12  failed   10 B     3      DCIM/B.MP4  413 from the server"
        );
    }

    #[test]
    fn times_are_iso_like() {
        let t = local_time(0);
        assert_eq!(t.len(), "1970-01-01 00:00:00 +0000".len(), "{t}");
        assert!(t.starts_with("19"), "{t}");
    }
}
