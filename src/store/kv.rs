//! The key/value table: small state that is not the user's choices (the account's status, the
//! server's Retry-After, a card's label, markers), one row per key.

use rusqlite::{params, OptionalExtension};

use super::{Result, Store};

impl Store {
    /// A value from the key/value table.
    pub fn get_kv(&self, key: &str) -> Result<Option<String>> {
        self.conn()
            .query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Sets (or with `None`, removes) a key/value entry.
    pub fn set_kv(&self, key: &str, value: Option<&str>) -> Result<()> {
        match value {
            Some(v) => self.exec(
                "INSERT INTO kv (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, v],
            ),
            None => self.exec("DELETE FROM kv WHERE key = ?1", params![key]),
        }
    }
}
