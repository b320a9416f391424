//! The app's error: a kind (which HTTP status), a snake_case code and a message that names the
//! field or item.

use crate::store;

/// An error for the API: a kind (which HTTP status), a snake_case code and a message that
/// names the field or item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AppError {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub message: String,
}

/// The class of an [`AppError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    NotFound,
    Conflict,
    /// The state directory has no room to save a grant (507).
    InsufficientStorage,
    Internal,
}

impl AppError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> AppError {
        AppError {
            kind: ErrorKind::BadRequest,
            code,
            message: message.into(),
        }
    }
    pub(super) fn conflict(code: &'static str, message: impl Into<String>) -> AppError {
        AppError {
            kind: ErrorKind::Conflict,
            code,
            message: message.into(),
        }
    }
    /// A grant (consent on, resume, a wider setting, pairing) that cannot be saved for lack
    /// of space is refused, naming what to do; a withdrawal never is.
    pub(super) fn no_room(what: &str, e: &store::StoreError) -> AppError {
        AppError::no_room_if(e.is_disk_full(), what, e)
    }

    /// [`AppError::no_room`] for any error: 507 `state_dir_full` when `full`, else 500.
    pub(super) fn no_room_if(full: bool, what: &str, e: &dyn std::fmt::Display) -> AppError {
        if !full {
            return AppError::internal(e);
        }
        AppError {
            kind: ErrorKind::InsufficientStorage,
            code: "state_dir_full",
            message: format!(
                "{what} cannot be saved: the camera's state storage is full ({e}); free some \
                 space and try again (switching things off still works)"
            ),
        }
    }
    pub(super) fn internal(e: impl std::fmt::Display) -> AppError {
        AppError {
            kind: ErrorKind::Internal,
            code: "internal",
            message: e.to_string(),
        }
    }
}

impl From<store::StoreError> for AppError {
    fn from(e: store::StoreError) -> AppError {
        match e {
            store::StoreError::NoSuchItem(id) => AppError {
                kind: ErrorKind::NotFound,
                code: "no_such_item",
                message: format!("no queue item with id {id}"),
            },
            e @ store::StoreError::WrongState { .. } => {
                AppError::conflict("wrong_state", e.to_string())
            }
            // Whatever asked for it (a manual upload, a retry): a full state disk is 507
            // `state_dir_full`, which the user can act on, never a bare 500.
            e if e.is_disk_full() => AppError::no_room("the request", &e),
            e => AppError::internal(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_state_disk_is_507_state_dir_full_whatever_asked() {
        let full = store::StoreError::Io {
            path: "/var/lib/cambackup/cambackup.db".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        let e = AppError::from(full);
        assert_eq!(
            (e.kind, e.code),
            (ErrorKind::InsufficientStorage, "state_dir_full")
        );
        let other = store::StoreError::Io {
            path: "/var/lib/cambackup/cambackup.db".into(),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        };
        assert_eq!(AppError::from(other).kind, ErrorKind::Internal);
    }
}
