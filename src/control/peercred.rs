//! Who may use the control socket, decided from the peer's kernel-reported credentials.
//!
//! The file mode (0660) is the first fence; this is the second, and the one that counts: the
//! kernel fills SO_PEERCRED at `connect()`, so a peer cannot lie about it.
//!
//! Limitation: SO_PEERCRED carries the peer's uid, its *primary* gid and pid, not its
//! supplementary groups. A user who is in an allowed group only as a supplementary group is not
//! recognised by `allowed_gids`; list their uid in `allowed_uids`, or make the group their
//! primary one (`sg GROUP -c 'cambackup status'` also works). Looking the groups up in
//! `/proc/PID/status` would be racy (the pid may be reused) and is not done.

use crate::config;

/// The credentials of the process at the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    /// The peer's primary (effective) group; supplementary groups are not known.
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Peer {
    /// Reads the peer's credentials from a connected Unix stream.
    pub fn of(stream: &tokio::net::UnixStream) -> std::io::Result<Peer> {
        let c = stream.peer_cred()?;
        Ok(Peer {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        })
    }
}

/// Who may connect: the daemon's own uid, plus the configured uids and primary gids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub own_uid: u32,
    pub allowed_uids: Vec<u32>,
    pub allowed_gids: Vec<u32>,
}

impl Policy {
    /// The policy for this process (its effective uid) and `[control]`.
    pub fn from_config(control: &config::Control) -> Policy {
        Policy {
            own_uid: effective_uid(),
            allowed_uids: control.allowed_uids.clone(),
            allowed_gids: control.allowed_gids.clone(),
        }
    }

    /// Whether `peer` may use the API.
    pub fn allows(&self, peer: &Peer) -> bool {
        allowed(self, peer)
    }
}

/// The decision, a pure function so it is tested without sockets or other users.
pub fn allowed(policy: &Policy, peer: &Peer) -> bool {
    peer.uid == policy.own_uid
        || policy.allowed_uids.contains(&peer.uid)
        || policy.allowed_gids.contains(&peer.gid)
}

/// This process's effective uid.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(own: u32, uids: &[u32], gids: &[u32]) -> Policy {
        Policy {
            own_uid: own,
            allowed_uids: uids.to_vec(),
            allowed_gids: gids.to_vec(),
        }
    }

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer {
            uid,
            gid,
            pid: None,
        }
    }

    #[test]
    fn decision_table() {
        let cases = [
            // (own uid, allowed uids, allowed gids, peer uid, peer gid, allowed?)
            (1000, &[][..], &[][..], 1000, 1000, true), // the daemon's own user
            (1000, &[0][..], &[][..], 0, 0, true),      // root when listed
            (1000, &[][..], &[][..], 0, 0, false),      // root is not special unless listed
            (1000, &[0][..], &[][..], 1001, 1001, false), // a stranger
            (1000, &[1001][..], &[][..], 1001, 5, true), // a listed uid
            (1000, &[][..], &[44][..], 1002, 44, true), // primary gid listed
            (1000, &[][..], &[44][..], 1002, 45, false), // another gid
            (1000, &[][..], &[1002][..], 1002, 7, false), // a gid list never matches a uid
        ];
        for (own, uids, gids, uid, gid, want) in cases {
            assert_eq!(
                allowed(&policy(own, uids, gids), &peer(uid, gid)),
                want,
                "own {own} uids {uids:?} gids {gids:?} peer {uid}:{gid}"
            );
        }
    }

    #[tokio::test]
    async fn real_peer_credentials_through_a_socketpair() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let p = Peer::of(&a).unwrap();
        let q = Peer::of(&b).unwrap();
        // SAFETY: no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!((p.uid, p.gid), (uid, gid));
        assert_eq!(p, q);
        assert_eq!(p.pid, Some(std::process::id() as i32));

        // Ourselves: allowed as the daemon's own user.
        assert!(policy(uid, &[], &[]).allows(&p));
        // The same real credentials, seen by a daemon running as someone else: refused unless
        // our uid or primary gid is listed.
        let other = uid.wrapping_add(1);
        assert!(!policy(other, &[], &[]).allows(&p));
        assert!(policy(other, &[uid], &[]).allows(&p));
        assert!(policy(other, &[], &[gid]).allows(&p));
    }
}
