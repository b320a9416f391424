//! Wi-Fi without internet and captive portals (issue 25): an upload's request found that the
//! server cannot be reached through the uplink at all (its name does not resolve, its host or
//! network is unreachable, or something else answers for it). The finding is pinned to that
//! link: the gate's verdict then shows `no_internet` or `captive_portal`, nothing starts
//! through the link, and `status.unreachable` names it, until the link changes (another
//! interface, gateway or address family: another network) or [`REPROBE`] passes on the same
//! one, when one upload tries again. So a camera on a café's portal sends one request per
//! ten minutes, not one per back-off step per file.
//!
//! Invariant: the finding only adds blocks to the gate's verdict (never lifts one), and a
//! completed upload or a new link lifts it.

use std::time::{Duration, Instant};

use super::{App, Live};
use crate::clock::now_unix;
use crate::conditions::{Link, Snapshot};
use crate::gate::{Block, Verdict};
use crate::upload::tus::Reach;
use crate::wire::Unreachable;

/// How long a finding holds on an unchanged link before one more try: a portal signed into
/// from a phone, an internet connection that came back behind the same Wi-Fi.
pub const REPROBE: Duration = Duration::from_secs(600);

/// The server could not be reached through `interface`.
#[derive(Debug, Clone)]
pub(super) struct NoPath {
    reach: Reach,
    /// The request's error, for the status.
    error: String,
    interface: String,
    /// The link as the conditions loop last read it: another reading of it (a new gateway, a
    /// family gained or lost) is another network.
    link: Option<Link>,
    since: Instant,
    /// When it was found (unix seconds), for the status.
    at: i64,
}

impl NoPath {
    fn block(&self) -> Block {
        match self.reach {
            Reach::NoInternet => Block::NoInternet,
            Reach::CaptivePortal => Block::CaptivePortal,
        }
    }

    /// Whether it still holds for this reading: the same uplink, unchanged, within
    /// [`REPROBE`].
    fn holds(&self, snapshot: &Snapshot, verdict: &Verdict) -> bool {
        verdict.uplink.as_deref() == Some(self.interface.as_str())
            && snapshot
                .links
                .iter()
                .find(|l| l.interface == self.interface)
                == self.link.as_ref()
            && self.since.elapsed() < REPROBE
    }

    pub(super) fn view(&self) -> Unreachable {
        let what = match self.reach {
            Reach::NoInternet => "has no internet: the server cannot be reached through it",
            Reach::CaptivePortal => {
                "answers for the server (a captive portal, or a proxy): sign in to the network, \
                 or use another one"
            }
        };
        Unreachable {
            code: self.block().as_str().to_string(),
            interface: self.interface.clone(),
            message: format!(
                "{} {what}; tried again when the network changes, or in {} minutes ({})",
                self.interface,
                REPROBE.as_secs() / 60,
                self.error
            ),
            since: self.at,
        }
    }
}

/// Adds `b` to both lists of `verdict`, in [`Block`]'s order.
fn add_block(verdict: &mut Verdict, b: Block) {
    for list in [&mut verdict.auto, &mut verdict.manual] {
        if !list.contains(&b) {
            list.push(b);
            list.sort();
        }
    }
}

impl App {
    /// An upload found the server unreachable through the uplink (`Some`), or one went
    /// through (`None`). Memory only: a restart tries again.
    pub fn set_no_path(&self, found: Option<(Reach, String)>) {
        {
            let mut live = self.live();
            match found {
                None => {
                    if live.no_path.take().is_some() {
                        tracing::info!("the server is reachable again");
                    }
                    return;
                }
                Some((reach, error)) => {
                    // No uplink any more: the conditions changed under the request; the next
                    // attempt finds out on the new one.
                    let Some(interface) = live.verdict.uplink.clone() else {
                        return;
                    };
                    let link = live
                        .snapshot
                        .as_ref()
                        .and_then(|s| s.links.iter().find(|l| l.interface == interface).cloned());
                    let found = NoPath {
                        reach,
                        error,
                        interface,
                        link,
                        since: Instant::now(),
                        at: now_unix(),
                    };
                    tracing::warn!(interface = %found.interface, block = %found.block(), "nothing more goes through this network until it changes");
                    add_block(&mut live.verdict, found.block());
                    live.auto_open = false;
                    live.no_path = Some(found);
                }
            }
        }
        self.reevaluate();
    }

    /// `status.unreachable`.
    pub(super) fn unreachable_view(live: &Live) -> Option<Unreachable> {
        live.no_path.as_ref().map(NoPath::view)
    }
}

/// A new reading of the conditions: the finding, if it still holds, adds its block to the
/// gate's verdict and keeps the auto gate shut; else it is lifted (one upload tries again).
pub(super) fn apply(
    live: &mut Live,
    snapshot: &Snapshot,
    verdict: &mut Verdict,
    auto_open: &mut bool,
) {
    let Some(found) = &live.no_path else {
        return;
    };
    if found.holds(snapshot, verdict) {
        add_block(verdict, found.block());
        *auto_open = false;
    } else {
        tracing::info!(interface = %found.interface, block = %found.block(), "the network changed (or it is time to look again): trying the server again");
        live.no_path = None;
    }
}
