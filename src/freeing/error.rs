//! What went wrong freeing space, each variant naming the file or the step: the pass report and
//! the log carry these lines, and the file is kept.

use std::path::PathBuf;

use super::command::Failure;
use crate::store::StoreError;

/// Why a pass could not gather its facts, or a file was not deleted.
#[derive(Debug, thiserror::Error)]
pub enum FreeingError {
    #[error("cannot read the backed-up files: {0}")]
    Candidates(#[source] StoreError),
    /// The store could not be read (`GET /v1/space`'s freed files).
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the gathering task failed: {0}")]
    GatherTask(#[source] tokio::task::JoinError),
    /// Consent, pairing, the card or recording changed before the deletion (the last look).
    #[error("freeing space was stopped (consent, pairing or recording)")]
    Stopped,
    #[error("cannot note the deletion first: {0}")]
    Note(#[source] StoreError),
    #[error("the delete task failed: {0}")]
    DeleteTask(#[source] tokio::task::JoinError),
    /// The file's directory or name cannot be looked at.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is another file now", path.display())]
    Replaced { path: PathBuf },
    #[error("{} is gone already", path.display())]
    Gone { path: PathBuf },
    #[error("unlink {}: {source}", path.display())]
    Unlink {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The maker's command did not succeed, and the file is still there.
    #[error("{}", failure.describe(cmd))]
    Command { cmd: PathBuf, failure: Failure },
    /// The maker's command did not succeed, and whether the file is gone cannot be told now
    /// (the card pulled): the note of the deletion settles it later.
    #[error("{}; then {}: {source}", failure.describe(cmd), path.display())]
    CommandThen {
        cmd: PathBuf,
        failure: Failure,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} exited 0 but {} is still there", cmd.display(), path.display())]
    StillThere { cmd: PathBuf, path: PathBuf },
    #[error("{} exited 0 but {}: {source}", cmd.display(), path.display())]
    AfterCommand {
        cmd: PathBuf,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The API's message for an error (`GET /v1/space` answers 500 with it).
impl From<FreeingError> for String {
    fn from(e: FreeingError) -> String {
        e.to_string()
    }
}
