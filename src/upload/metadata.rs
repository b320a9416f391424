//! STUB: the upload helper replaces this file.
//! The only data sent with an upload (CONTRACT section 6).

use crate::media::StoragePath;

/// Exactly the four fields the privacy policy allows; there is no way to add a fifth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadMetadata {
    user_id: String,
    device_type: String,
    serial_number: String,
    storage_path: StoragePath,
}

impl UploadMetadata {
    /// The field names, as sent and as `GET /v1/privacy` lists them.
    pub const FIELDS: [&'static str; 4] =
        ["user_id", "device_type", "serial_number", "storage_path"];

    pub fn new(
        user_id: &str,
        device_type: &str,
        serial_number: &str,
        storage_path: &StoragePath,
    ) -> Self {
        UploadMetadata {
            user_id: user_id.into(),
            device_type: device_type.into(),
            serial_number: serial_number.into(),
            storage_path: storage_path.clone(),
        }
    }
}
