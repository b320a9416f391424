//! The only data sent with an upload (INTERFACE.md section 6).
//!
//! Invariant: the `Upload-Metadata` header carries exactly the four keys the privacy policy
//! names. The type has no other fields and no way to add one, so a fifth key would need a change
//! here, where `GET /v1/privacy` reads [`UploadMetadata::FIELDS`] from too.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

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

    /// The metadata of one upload: the account's user ID, the camera's type and serial (from
    /// `[device]`), and the file's path relative to `media.root`.
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

    /// The storage path this metadata names.
    pub fn storage_path(&self) -> &StoragePath {
        &self.storage_path
    }

    /// The `(key, value)` pairs, in [`Self::FIELDS`] order.
    pub fn pairs(&self) -> [(&'static str, &str); 4] {
        let [u, d, s, p] = Self::FIELDS;
        [
            (u, self.user_id.as_str()),
            (d, self.device_type.as_str()),
            (s, self.serial_number.as_str()),
            (p, self.storage_path.as_str()),
        ]
    }

    /// The tus `Upload-Metadata` header value: `key base64(value)` pairs joined by commas.
    ///
    /// Values are standard base64 (with padding), as tus 1.0 requires: that makes spaces,
    /// commas and any UTF-8 in a storage path safe in a header. An empty value is sent as the
    /// bare key, which the spec allows (`key ` with a trailing space is rejected by some
    /// servers).
    pub fn header_value(&self) -> String {
        self.pairs()
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    (*k).to_string()
                } else {
                    format!("{k} {}", STANDARD.encode(v.as_bytes()))
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::Path;

    /// Decodes an `Upload-Metadata` header as a tus server would (shared with the transfer tests).
    pub(crate) fn decode(header: &str) -> BTreeMap<String, String> {
        header
            .split(',')
            .map(|pair| {
                let pair = pair.trim();
                let (k, v) = pair.split_once(' ').unwrap_or((pair, ""));
                let value = String::from_utf8(STANDARD.decode(v).expect("standard base64"))
                    .expect("utf-8 value");
                (k.to_string(), value)
            })
            .collect()
    }

    #[test]
    fn header_decodes_back_to_exactly_the_four_fields() {
        let path =
            StoragePath::from_relative(Path::new("DCIM/my holiday, day 1/été 🎉,x.jpg")).unwrap();
        let m = UploadMetadata::new("user-42", "SJ10 Pro", "SJ10P22910042", &path);
        let header = m.header_value();
        // Commas and spaces of the values must not leak into the header's own syntax.
        assert_eq!(header.matches(',').count(), 3, "{header}");
        let decoded = decode(&header);
        let want: BTreeMap<String, String> = [
            ("user_id", "user-42"),
            ("device_type", "SJ10 Pro"),
            ("serial_number", "SJ10P22910042"),
            ("storage_path", "DCIM/my holiday, day 1/été 🎉,x.jpg"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(decoded, want);
    }

    #[test]
    fn an_empty_value_is_sent_as_a_bare_key() {
        let path = StoragePath::from_relative(Path::new("A.JPG")).unwrap();
        let header = UploadMetadata::new("", "T", "S", &path).header_value();
        assert!(header.starts_with("user_id,device_type "), "{header}");
        assert_eq!(decode(&header)["user_id"], "");
    }
}
