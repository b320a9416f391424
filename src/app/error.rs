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
            e => AppError::internal(e),
        }
    }
}
