//! The user's choices (settings, pause, the app's "metered"): the choices file beside the
//! database is the record (`ledger.rs` writes it), the database keeps a copy.
//!
//! Invariant: losing state never grants more than the user did: a rebuilt database without the
//! file starts with consent off, and a file that is missing where the database says there was
//! one, or damaged, is "no record", which allows nothing the user has to grant.

use super::{ledger, Result, Store, StoreError};
use crate::settings::Settings;

impl Store {
    /// The user's choices: the choices file, else the database's copy (a daemon from before
    /// the file), else `defaults`. A database rebuilt after corruption with no choices file
    /// starts with consent off whatever the maker's default: losing state never turns it on.
    /// Nor does a stale copy: an empty or damaged file, or a missing one where the database
    /// says there was one, is "no record", which allows nothing ([`no_record`]); the database's
    /// copy may predate a withdrawal the full disk had no room for.
    /// The app's "metered" is always `Some` in what this returns: a file an earlier release
    /// wrote has it from the database, where that release kept it.
    pub(super) fn choices(&self, defaults: &Settings) -> Result<ledger::Choices> {
        let mut c = self.choices_recorded(defaults)?;
        if c.metered.is_none() {
            c.metered = Some(match self.get_kv(METERED_KEY)?.as_deref() {
                Some("true") => Some(true),
                Some("false") => Some(false),
                _ => None,
            });
        }
        Ok(c)
    }

    fn choices_recorded(&self, defaults: &Settings) -> Result<ledger::Choices> {
        let no_record = match ledger::load_choices(&self.dir) {
            ledger::ChoicesFile::Found(c) => return Ok(c),
            ledger::ChoicesFile::NoRecord => true,
            ledger::ChoicesFile::Missing => self.get_kv(CHOICES_FILE_KEY)?.is_some(),
        };
        let settings = self
            .get_kv("settings")?
            .and_then(|s| serde_json::from_str(&s).ok());
        let paused = self.get_kv("paused")?.as_deref() == Some("1");
        Ok(match settings {
            _ if no_record => no_record_of(ledger::Choices {
                settings: settings.unwrap_or_else(|| defaults.clone()),
                paused,
                metered: None,
                metered_networks: Vec::new(),
            }),
            Some(settings) => ledger::Choices {
                settings,
                paused,
                metered: None,
                metered_networks: Vec::new(),
            },
            None if self.rebuilt => ledger::Choices {
                settings: Settings {
                    auto_upload: false,
                    ..defaults.clone()
                },
                paused,
                metered: None,
                metered_networks: Vec::new(),
            },
            None => ledger::Choices {
                settings: defaults.clone(),
                paused,
                metered: None,
                metered_networks: Vec::new(),
            },
        })
    }

    /// Saves the user's choices: the choices file (the record), then the database's copy.
    /// Fails, changing nothing, when the file cannot be written (a full disk: a grant is then
    /// refused). The copy is best effort: the file is what the next start reads.
    pub fn save_choices(&self, c: &ledger::Choices) -> Result<()> {
        ledger::save_choices(&self.dir, c).map_err(|source| StoreError::Io {
            path: self.dir.join(ledger::CHOICES_FILE),
            source,
        })?;
        let json = serde_json::to_string(&c.settings).expect("settings serialize");
        let copy = self
            .set_kv("settings", Some(&json))
            .and_then(|()| self.set_kv("paused", c.paused.then_some("1")))
            .and_then(|()| {
                let m = c
                    .metered
                    .flatten()
                    .map(|m| if m { "true" } else { "false" });
                self.set_kv(METERED_KEY, m)
            })
            .and_then(|()| self.set_kv(CHOICES_FILE_KEY, Some("1")));
        if let Err(e) = copy {
            tracing::warn!(error = %e, "the user's choices are saved, but not the database's copy of them");
        }
        Ok(())
    }

    /// Saves a withdrawal (consent off, pause, freeing off, a narrower setting) whatever the
    /// disk says. Where the disk has no room for a new file, the withdrawal is written over
    /// the choices file in place, or else the file is emptied (no free space needed): either
    /// way the next start allows no more than the withdrawal does. `Err` means it is not
    /// saved the normal way: the caller saves it again once the disk has room.
    pub fn save_withdrawal(&self, c: &ledger::Choices) -> Result<()> {
        let Err(e) = self.save_choices(c) else {
            return Ok(());
        };
        match ledger::overwrite_choices(&self.dir, c) {
            Ok(()) => {
                tracing::warn!(error = %e, "no room for the user's choices file: the withdrawal was written over it in place");
            }
            Err(_) => match ledger::clear_choices(&self.dir) {
                Ok(()) => {
                    tracing::warn!(error = %e, "no room for the user's choices file: emptied it, so that the next start allows nothing until it is saved")
                }
                Err(e2) => {
                    tracing::error!(error = %e, clear_error = %e2, "cannot record the withdrawal at all: it holds until the daemon stops")
                }
            },
        }
        Err(e)
    }

    /// Writes the choices file if there is none yet (a first start, a daemon from before the
    /// file, a rebuilt database whose "consent off" must outlive the next start too, or "no
    /// record" left by a withdrawal on a full disk).
    pub fn ensure_choices_saved(&self, defaults: &Settings) -> Result<()> {
        if let ledger::ChoicesFile::Found(_) = ledger::load_choices(&self.dir) {
            // A file an earlier release wrote: from now on, its loss is not taken for "a
            // daemon from before the file" (best effort, like the copy).
            if self.get_kv(CHOICES_FILE_KEY)?.is_none() {
                let _ = self.set_kv(CHOICES_FILE_KEY, Some("1"));
            }
            return Ok(());
        }
        let c = self.choices(defaults)?;
        self.save_choices(&c)
    }

    /// The user's settings, or `defaults` if the user never changed them.
    pub fn settings(&self, defaults: &Settings) -> Result<Settings> {
        Ok(self.choices(defaults)?.settings)
    }

    /// Stores the user's settings.
    pub fn save_settings(&self, s: &Settings) -> Result<()> {
        let mut c = self.choices(s)?;
        c.settings = s.clone();
        self.save_choices(&c)
    }

    /// The app's "the Wi-Fi is metered" (`None`: the daemon decides), kept across restarts.
    pub fn metered(&self) -> Result<Option<bool>> {
        Ok(self.choices(&Settings::default())?.metered.flatten())
    }

    /// All of the app's "metered" answers: for every network, and per Wi-Fi network.
    pub fn metered_answers(&self) -> Result<(Option<bool>, Vec<ledger::MeteredNetwork>)> {
        let c = self.choices(&Settings::default())?;
        Ok((c.metered.flatten(), c.metered_networks))
    }

    /// Whether the user paused uploads (kept across restarts).
    pub fn paused(&self) -> Result<bool> {
        Ok(self.choices(&Settings::default())?.paused)
    }

    pub fn set_paused(&self, paused: bool) -> Result<()> {
        let mut c = self.choices(&Settings::default())?;
        c.paused = paused;
        self.save_choices(&c)
    }
}

/// The database's copy of the app's "metered" (`PUT /v1/network`); the record before the
/// choices file held it.
const METERED_KEY: &str = "network.metered";

/// Set in the kv table once the choices file was written: a missing file is then lost, not
/// "a daemon from before the file", and the database's copy is not taken for the record.
const CHOICES_FILE_KEY: &str = "choices.file";

/// What "no record of the user's choices" allows: nothing the user has to grant (consent
/// off, paused, freeing space off, Wi-Fi only, the Wi-Fi taken for metered); the rest as
/// `base` had it.
fn no_record_of(base: ledger::Choices) -> ledger::Choices {
    ledger::Choices {
        settings: base.settings.unrecorded(),
        paused: true,
        metered: Some(Some(true)),
        metered_networks: Vec::new(),
    }
}
