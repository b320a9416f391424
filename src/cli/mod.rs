//! The command line (INTERFACE.md section 1). `daemon` and `check-config` run in this process (the
//! binary's `main` dispatches them); every other command is a thin client of the control API.
//!
//! Exit codes: 0 success; 2 bad usage or a bad argument (clap's own errors, a bad setting value,
//! a 400 from the daemon); 1 anything else (daemon not running, refused, failed).

mod client;
pub mod render;

/// `print!` that treats a closed stdout (`cambackup history | head -1`) as the reader being
/// done: exit 0, never the panic `print!` gives on EPIPE.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = write!(stdout, $($arg)*).and_then(|_| stdout.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("cambackup: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }};
}

/// [`out!`] with a newline.
macro_rules! outln {
    () => { out!("\n") };
    ($($arg:tt)*) => { out!("{}\n", format_args!($($arg)*)) };
}

use std::io::Read as _;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

pub use client::{Client, ClientError};

/// The default control socket, used when neither `--socket` nor a readable config names one.
pub const DEFAULT_SOCKET: &str = "/run/cambackup/control.sock";

/// `cambackup --version`: the package version and the git commit it was built from (build.rs),
/// `unknown` from a tarball. The fuzz build has no build script: the bare version there.
pub const VERSION: &str = match option_env!("CAMBACKUP_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// `cambackup`: backs up the camera's photos and videos to the cloud, when you allow it.
#[derive(Debug, Parser)]
#[command(
    name = "cambackup",
    version = VERSION,
    about = "Backs up the camera's photos and videos to the cloud, when you allow it",
    long_about = "Backs up the camera's photos and videos to the cloud, when you allow it.\n\n\
        `cambackup daemon` runs the agent; every other command but `check-config` talks to it \
        over its control socket (the same API the companion app uses)."
)]
pub struct Cli {
    /// The daemon's control socket [default: `control.socket` from the config, else
    /// /run/cambackup/control.sock]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// The config file [default: $CAMBACKUP_CONFIG, else /etc/cambackup/cambackup.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands. `Daemon` and `CheckConfig` are the binary's to run (with [`Cli::config`]);
/// the rest go to [`run_client`].
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the agent in the foreground (systemd Type=notify)
    Daemon,
    /// Validate the config and print the effective settings (exit 0, or 2 naming the bad key)
    CheckConfig,
    /// Show the state, what blocks uploads, the queue and the upload in progress
    Status {
        /// Print the daemon's JSON answer
        #[arg(long)]
        json: bool,
    },
    /// Pause all uploads (kept across restarts) until `resume`
    Pause,
    /// Resume uploads after `pause`
    Resume,
    /// Upload files now, whatever idle and charging say (the network preference still applies)
    Upload {
        /// Files relative to the media root, or absolute paths inside it
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// List the queue
    Queue {
        /// Only items in this state
        #[arg(long, value_name = "STATE", value_parser = item_state)]
        state: Option<crate::store::ItemState>,
        /// Print the daemon's JSON answer
        #[arg(long)]
        json: bool,
    },
    /// Retry a failed item
    Retry {
        /// The item's id (see `cambackup queue`)
        id: i64,
    },
    /// Cancel an item (stops it if it is uploading)
    Cancel {
        /// The item's id (see `cambackup queue`)
        id: i64,
    },
    /// Show the settings, one setting, or set one
    #[command(long_about = settings_help())]
    Settings {
        /// The setting's name
        key: Option<String>,
        /// Its new value
        value: Option<String>,
    },
    /// Pair with an account; the token is read from a file or stdin, never from the command line
    #[command(override_usage = "cambackup pair --user-id <ID> --token-file <FILE> [--region <R>]")]
    Pair {
        /// The account's user ID
        #[arg(long, value_name = "ID")]
        user_id: String,
        /// A file holding the token (`-` for stdin)
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
        /// The account's region (one of the config's [cloud.regions])
        #[arg(long, value_name = "R")]
        region: Option<String>,
    },
    /// Unpair: stop uploads, forget the token and user ID, erase the history
    Unpair,
    /// Show what was uploaded, and when
    History {
        /// Print the daemon's JSON answer
        #[arg(long)]
        json: bool,
    },
    /// Show exactly what leaves the device, and where to
    Privacy {
        /// Print the daemon's JSON answer
        #[arg(long)]
        json: bool,
    },
    /// Follow the daemon's events (state, progress, items) until Ctrl-C
    Events,
    /// Say why a file is or is not backed up: its state, the reason, attempts, bytes sent, the
    /// card it came from
    #[command(
        long_about = "Say why a file is or is not backed up: its state (pending, uploading, \
        done, failed...; `not_queued` for a file cambackup has no queue item for), the reason \
        as a code and a sentence (waiting for Wi-Fi or for your consent, not settled yet, \
        excluded type, a link, failed with an error, waiting to retry at a time, done, freed, \
        deleted from the card...), attempts, bytes sent and the card it came from.\n\n\
        PATH is a storage path, as `cambackup queue` shows it (relative to the media root), or \
        an absolute path on the card."
    )]
    Why {
        /// A storage path (`DCIM/100MEDIA/IMG_0001.JPG`) or an absolute path on the card
        path: String,
        /// Print the daemon's JSON answer
        #[arg(long)]
        json: bool,
    },
    /// Show the card's space, the freeing-space rules, and what freeing space would delete
    #[command(
        long_about = "Show the card's space, the freeing-space rules in force, the last \
        pass, and what freeing space would delete now and why not the rest.\n\n\
        Nothing is deleted by this command: the daemon frees space by itself when the camera \
        maker configured it and the `free_space` setting is `when_low`."
    )]
    Space {
        /// List file by file what would be freed (oldest first) and why each other file is kept
        #[arg(long)]
        dry_run: bool,
        /// Print the daemon's JSON answer
        #[arg(long)]
        json: bool,
    },
    /// Write a support bundle (a .tar.gz for the maker's support): version, config, status,
    /// queue and history summaries, the daemon's last log lines, the kernel, the card, the links
    #[command(
        long_about = "Write a support bundle: a .tar.gz for the camera maker's support with the \
        version and build, the config, the status, queue and history summaries, the daemon's \
        last log lines, the kernel, the card's file system and free space, and the network \
        links.\n\nIt never holds the account's token or user ID. It holds no name of a file on \
        the card unless you pass --with-names."
    )]
    Report {
        /// Where to write it (`-`: standard output)
        #[arg(
            short = 'o',
            long = "output",
            value_name = "FILE",
            default_value = "cambackup-report.tar.gz"
        )]
        output: PathBuf,
        /// Include the names of the card's files (left out by default)
        #[arg(long)]
        with_names: bool,
    },
    /// Print a shell completion script (the .deb installs them; elsewhere, e.g.
    /// `cambackup completions bash > /etc/bash_completion.d/cambackup`)
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write the man pages (roff: cambackup.1 and one per subcommand) into DIR, made from this
    /// command line's definition; the .deb installs them
    #[command(hide = true)]
    Man {
        /// The directory to write them to
        dir: PathBuf,
    },
}

/// The shells `completions` writes for: those the .deb installs a script for. Not
/// `clap_complete::Shell`, whose other generators (elvish, PowerShell) would be linked in for
/// shells a camera's Linux does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl Shell {
    /// The script for this shell.
    pub fn script(self) -> Vec<u8> {
        use clap_complete::{generate, shells};
        let mut script = Vec::new();
        let (cmd, name) = (&mut definition(), "cambackup");
        match self {
            Shell::Bash => generate(shells::Bash, cmd, name, &mut script),
            Shell::Zsh => generate(shells::Zsh, cmd, name, &mut script),
            Shell::Fish => generate(shells::Fish, cmd, name, &mut script),
        }
        script
    }
}

#[cfg(test)]
impl Command {
    /// Whether the command is a client of the control socket (all but `daemon`, `check-config`).
    pub fn is_client(&self) -> bool {
        !matches!(
            self,
            Command::Daemon
                | Command::CheckConfig
                | Command::Completions { .. }
                | Command::Man { .. }
        )
    }
}

/// The command line's definition as clap builds it from [`Cli`]: what the completions and the
/// man page are generated from, so they cannot drift from the parser.
pub fn definition() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Parses the command line; on a usage error prints it and exits 2 (`--help`: 0).
pub fn parse() -> Cli {
    Cli::parse()
}

/// Runs a client command on a small single-threaded runtime; returns the exit code.
/// `completions` and `man` need no daemon: they print what [`Cli`]'s definition gives.
pub fn run(cli: &Cli) -> i32 {
    match &cli.command {
        Command::Completions { shell } => {
            out!("{}", String::from_utf8_lossy(&shell.script()));
            return 0;
        }
        Command::Man { dir } => {
            return match clap_mangen::generate_to(definition(), dir) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!(
                        "cambackup: cannot write the man pages to {}: {e}",
                        dir.display()
                    );
                    1
                }
            };
        }
        _ => {}
    }
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run_client(cli)),
        Err(e) => {
            eprintln!("cambackup: cannot start the async runtime: {e}");
            1
        }
    }
}

/// A failed command: the exit code and what to say.
#[derive(Debug)]
struct Fail {
    code: i32,
    message: String,
}

impl Fail {
    fn usage(message: impl Into<String>) -> Fail {
        Fail {
            code: 2,
            message: message.into(),
        }
    }
    fn other(message: impl Into<String>) -> Fail {
        Fail {
            code: 1,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Fail {
        Fail::other(e.to_string())
    }
}

/// Runs a client command (anything but `daemon` and `check-config`); returns the exit code.
pub async fn run_client(cli: &Cli) -> i32 {
    let socket = match socket_path(cli) {
        Ok(s) => s,
        Err(f) => return report(f),
    };
    let client = Client::new(socket);
    match command(&client, &cli.command).await {
        Ok(()) => 0,
        Err(f) => report(f),
    }
}

fn report(f: Fail) -> i32 {
    eprintln!("cambackup: {}", f.message);
    f.code
}

/// The socket to talk to: `--socket`, else `control.socket` from the config file (when it can
/// be read: it is often readable by root only), else [`DEFAULT_SOCKET`]. An explicit `--config`
/// that cannot be read or parsed is an error naming it.
fn socket_path(cli: &Cli) -> Result<PathBuf, Fail> {
    if let Some(s) = &cli.socket {
        return Ok(s.clone());
    }
    let file = crate::config::resolve_path(cli.config.as_deref());
    match std::fs::read_to_string(&file) {
        Ok(text) => match socket_from_config(&text) {
            Ok(s) => Ok(s.unwrap_or_else(|| DEFAULT_SOCKET.into())),
            Err(e) if cli.config.is_some() => Err(Fail::usage(format!(
                "{}: {e} (or pass --socket)",
                file.display()
            ))),
            Err(_) => Ok(DEFAULT_SOCKET.into()),
        },
        Err(e) if cli.config.is_some() => Err(Fail::usage(format!(
            "cannot read config file {}: {e} (or pass --socket)",
            file.display()
        ))),
        Err(_) => Ok(DEFAULT_SOCKET.into()),
    }
}

/// Only `[control] socket` from a config file; the rest is the daemon's to validate.
fn socket_from_config(text: &str) -> Result<Option<PathBuf>, String> {
    #[derive(Deserialize)]
    struct Partial {
        #[serde(default)]
        control: PartialControl,
    }
    #[derive(Deserialize, Default)]
    struct PartialControl {
        socket: Option<PathBuf>,
    }
    let p: Partial = toml::from_str(text).map_err(|e| e.message().to_string())?;
    Ok(p.control.socket)
}

async fn command(client: &Client, cmd: &Command) -> Result<(), Fail> {
    match cmd {
        Command::Daemon
        | Command::CheckConfig
        | Command::Completions { .. }
        | Command::Man { .. } => Err(Fail::usage(
            "`daemon`, `check-config`, `completions` and `man` are not client commands",
        )),
        Command::Status { json } => {
            let v = get(client, "/v1/status").await?;
            print_as(json, &v, |v| render::status(&view(v)))
        }
        Command::Pause => {
            call(client, Method::POST, "/v1/pause", None).await?;
            outln!("paused: no uploads until `cambackup resume`");
            Ok(())
        }
        Command::Resume => {
            call(client, Method::POST, "/v1/resume", None).await?;
            outln!("resumed");
            Ok(())
        }
        Command::Upload { paths } => upload(client, paths).await,
        Command::Queue { state, json } => {
            queue(client, state.map(crate::store::ItemState::as_str), *json).await
        }
        Command::Retry { id } => {
            let v = call(client, Method::POST, &format!("/v1/queue/{id}/retry"), None).await?;
            outln!("#{id} {} will be retried", str_of(&v, "storage_path"));
            Ok(())
        }
        Command::Cancel { id } => {
            let v = call(client, Method::DELETE, &format!("/v1/queue/{id}"), None).await?;
            outln!("#{id} {} cancelled", str_of(&v, "storage_path"));
            Ok(())
        }
        Command::Settings { key, value } => {
            settings(client, key.as_deref(), value.as_deref()).await
        }
        Command::Pair {
            user_id,
            token_file,
            region,
        } => pair(client, user_id, token_file, region.as_deref()).await,
        Command::Unpair => {
            let v = call(client, Method::DELETE, "/v1/account", None).await?;
            outln!(
                "unpaired: token, user ID and history erased; {} ended, {} could not be \
                 ended",
                crate::words::count(
                    v["terminated"].as_u64().unwrap_or(0),
                    "unfinished server upload",
                    "unfinished server uploads"
                ),
                v["not_terminated"]
            );
            Ok(())
        }
        Command::History { json } => {
            let v = get(client, "/v1/history?limit=10000").await?;
            print_as(json, &v, |v| {
                render::history(&view::<Vec<_>>(&v["entries"]))
            })
        }
        Command::Privacy { json } => {
            let v = get(client, "/v1/privacy").await?;
            print_as(json, &v, |v| render::privacy(&view(v)))
        }
        Command::Events => events(client).await,
        Command::Report { output, with_names } => support_bundle(client, output, *with_names).await,
        Command::Why { path, json } => {
            let v = get(client, &format!("/v1/files/{}", percent_encode(path))).await?;
            print_as(json, &v, |v| render::why(&view(v)))
        }
        Command::Space { dry_run, json } => {
            let v = get(client, "/v1/space").await?;
            print_as(json, &v, |v| render::space(v, *dry_run))
        }
    }
}

/// `s` as one URI path segment: every byte but the unreserved ones (RFC 3986) as `%XX`, `/`
/// included, so an absolute path on the card is not read as the URI's own slashes.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A lenient view of an answer (see `render`): what does not fit is left at its default.
fn view<T: for<'de> Deserialize<'de> + Default>(v: &Value) -> T {
    T::deserialize(v).unwrap_or_default()
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn print_as(json: &bool, v: &Value, human: impl FnOnce(&Value) -> String) -> Result<(), Fail> {
    if *json {
        outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        out!("{}", human(v));
    }
    Ok(())
}

async fn get(client: &Client, path: &str) -> Result<Value, Fail> {
    call(client, Method::GET, path, None).await
}

/// One call; a non-2xx answer becomes a [`Fail`] carrying the daemon's message (exit 2 for 400).
async fn call(
    client: &Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, Fail> {
    let body = call_raw(client, method, path, body).await?;
    serde_json::from_slice(&body)
        .map_err(|e| Fail::other(format!("the daemon's answer to {path} is not JSON: {e}")))
}

/// One call; the body of a 2xx answer as it is, any other a [`Fail`] (see [`call`]).
async fn call_raw(
    client: &Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Vec<u8>, Fail> {
    let answer = client.call(method, path, body).await?;
    if answer.status.is_success() {
        return Ok(answer.body.to_vec());
    }
    let message = match client::error_of(&answer.body) {
        Some((_, m)) => m,
        None => String::from_utf8_lossy(&answer.body).trim().to_string(),
    };
    let code = if answer.status == StatusCode::BAD_REQUEST {
        2
    } else {
        1
    };
    Err(Fail {
        code,
        message: format!("the daemon refused: {message} ({})", answer.status),
    })
}

/// `report`: the support bundle to a file (or stdout), and where it went.
async fn support_bundle(client: &Client, output: &Path, with_names: bool) -> Result<(), Fail> {
    let path = format!("/v1/report?with_names={with_names}");
    let bundle = call_raw(client, Method::GET, &path, None).await?;
    if output == Path::new("-") {
        use std::io::Write as _;
        return std::io::stdout()
            .lock()
            .write_all(&bundle)
            .map_err(|e| Fail::other(format!("cannot write the bundle to stdout: {e}")));
    }
    std::fs::write(output, &bundle)
        .map_err(|e| Fail::other(format!("cannot write {}: {e}", output.display())))?;
    outln!(
        "wrote {} ({} bytes): send it to the maker's support; it holds no token{}",
        output.display(),
        bundle.len(),
        if with_names {
            ", and the names of the card's files (--with-names)"
        } else {
            " and no file names"
        }
    );
    Ok(())
}

async fn upload(client: &Client, paths: &[String]) -> Result<(), Fail> {
    let v = call(
        client,
        Method::POST,
        "/v1/uploads",
        Some(&json!({"paths": paths})),
    )
    .await?;
    for a in v["accepted"].as_array().into_iter().flatten() {
        let what = match str_of(a, "outcome") {
            "already_uploaded" => "already uploaded",
            _ => "queued",
        };
        outln!("#{} {} {what}", a["id"], str_of(a, "path"));
    }
    Ok(())
}

async fn queue(client: &Client, state: Option<&str>, json: bool) -> Result<(), Fail> {
    // Page through the whole queue: the server caps a page at 1000 items.
    let mut items: Vec<Value> = Vec::new();
    let mut after = 0i64;
    loop {
        let mut path = format!("/v1/queue?limit=1000&after={after}");
        if let Some(s) = state {
            path.push_str("&state=");
            path.push_str(s);
        }
        let v = get(client, &path).await?;
        items.extend(v["items"].as_array().cloned().unwrap_or_default());
        match v["next_after"].as_i64() {
            Some(n) if n > after => after = n,
            _ => break,
        }
    }
    let v = json!({ "items": items });
    print_as(&json, &v, |v| render::queue(&view::<Vec<_>>(&v["items"])))
}

/// The settings a user may change, in the order they are shown: the settings table's.
pub(crate) fn setting_names() -> &'static [&'static str] {
    crate::settings::Settings::NAMES
}

/// The field names of a struct, in declaration order, from its derived `Deserialize`: the
/// derive hands them to `deserialize_struct`, where this deserializer takes them and stops.
#[cfg(test)]
fn struct_fields<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};
    struct Fields(&'static [&'static str]);
    impl<'de> de::Deserializer<'de> for &mut Fields {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(de::Error::custom("only the field names were wanted"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut f = Fields(&[]);
    let _ = T::deserialize(&mut f);
    f.0
}

async fn settings(client: &Client, key: Option<&str>, value: Option<&str>) -> Result<(), Fail> {
    if let Some(k) = key {
        if !setting_names().contains(&k) {
            return Err(unknown_setting(k));
        }
    }
    let v = match (key, value) {
        (Some(k), Some(val)) => {
            let parsed = parse_setting(k, val).map_err(Fail::usage)?;
            let mut patch = serde_json::Map::new();
            patch.insert(k.to_string(), parsed);
            call(
                client,
                Method::PATCH,
                "/v1/settings",
                Some(&Value::Object(patch)),
            )
            .await?
        }
        _ => get(client, "/v1/settings").await?,
    };
    for &k in setting_names() {
        if key.is_none_or(|want| want == k) {
            outln!("{k}={}", render::setting_value(&v[k]));
        }
    }
    Ok(())
}

/// `--state`: the store's own state names (not a second list of them).
fn item_state(s: &str) -> Result<crate::store::ItemState, String> {
    crate::store::ItemState::parse(s).ok_or_else(|| {
        let names: Vec<&str> = crate::store::ItemState::ALL.map(|st| st.as_str()).to_vec();
        format!("one of {}", names.join(", "))
    })
}

fn unknown_setting(key: &str) -> Fail {
    Fail::usage(format!(
        "unknown setting `{key}` (settings: {})",
        setting_names().join(", ")
    ))
}

/// A setting's value from the command line, by the setting's type (the settings table's
/// [`crate::settings::SettingValue`]), checked as the API checks it: the JSON value the patch
/// sends.
fn parse_setting(key: &str, value: &str) -> Result<Value, String> {
    let patch = crate::settings::SettingsPatch::from_cli(key, value)
        .ok_or_else(|| unknown_setting(key).message)??;
    let mut json = serde_json::to_value(patch).expect("plain data serializes");
    Ok(json[key].take())
}

/// `settings --help`: every setting and its values, from the settings table.
fn settings_help() -> String {
    let each: Vec<String> = crate::settings::Settings::HELP
        .iter()
        .map(|(name, help)| format!("{name} ({help})"))
        .collect();
    format!(
        "Show the settings, one setting, or set one.\n\nSettings: {}.\n\n\
         Example: cambackup settings network unmetered",
        each.join(", ")
    )
}

async fn pair(
    client: &Client,
    user_id: &str,
    token_file: &Path,
    region: Option<&str>,
) -> Result<(), Fail> {
    let token = read_token(token_file)?;
    let mut body = json!({"user_id": user_id, "token": token});
    if let Some(r) = region {
        body["region"] = Value::String(r.into());
    }
    let v = call(client, Method::PUT, "/v1/account", Some(&body)).await?;
    let region = v["region"]
        .as_str()
        .map(|r| format!(", region {r}"))
        .unwrap_or_default();
    outln!(
        "paired as {}{region}; uploads go to {}",
        str_of(&v, "user_id"),
        str_of(&v, "endpoint")
    );
    if let Some(m) = v["token_check"]["message"].as_str() {
        outln!("{m}");
    }
    Ok(())
}

/// The token from a file or stdin (`-`), without its trailing newline. Never from argv: the
/// command line is visible to every user in `ps`.
fn read_token(file: &Path) -> Result<String, Fail> {
    let mut text = String::new();
    if file == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Fail::other(format!("cannot read the token from stdin: {e}")))?;
    } else {
        text = std::fs::read_to_string(file).map_err(|e| {
            Fail::usage(format!("--token-file: cannot read {}: {e}", file.display()))
        })?;
    }
    let token = text.trim_end_matches(['\n', '\r']);
    if token.is_empty() {
        return Err(Fail::usage(format!(
            "--token-file: {} holds no token",
            file.display()
        )));
    }
    Ok(token.to_string())
}

/// Follows `GET /v1/events`, one line per event, until Ctrl-C or the daemon ends the stream.
async fn events(client: &Client) -> Result<(), Fail> {
    use http_body_util::BodyExt;
    let response = client.send(Method::GET, "/v1/events", None).await?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let message = client::error_of(&body).map(|(_, m)| m).unwrap_or_default();
        return Err(Fail::other(format!(
            "the daemon refused: {message} ({status})"
        )));
    }
    let mut body = response.into_body();
    let mut parser = SseParser::default();
    loop {
        let frame = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            f = body.frame() => f,
        };
        match frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    for (name, data) in parser.feed(data) {
                        let v: Value = serde_json::from_str(&data).unwrap_or(Value::String(data));
                        outln!(
                            "{}",
                            render::event_line(&name, &v, crate::clock::now_unix())
                        );
                    }
                }
            }
            Some(Err(e)) => return Err(Fail::other(format!("the event stream broke: {e}"))),
            None => {
                return Err(Fail::other(
                    "the daemon ended the event stream (it stopped, or this reader fell behind)",
                ))
            }
        }
    }
}

/// Splits a Server-Sent Events byte stream into (event name, data) pairs.
#[derive(Debug, Default)]
struct SseParser {
    buf: String,
}

impl SseParser {
    fn feed(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        self.buf
            .push_str(&String::from_utf8_lossy(bytes).replace("\r\n", "\n"));
        let mut out = Vec::new();
        while let Some(end) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..end + 2).collect();
            let (mut name, mut data) = (String::from("message"), Vec::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim_start().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                }
            }
            // Blocks without data are keep-alive comments.
            if !data.is_empty() {
                out.push((name, data.join("\n")));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The completions and the man page come from the parser's own definition: every
    /// subcommand and option the parser accepts is in them (clap derive: one source).
    #[test]
    fn completions_and_man_page_name_every_command_and_option() {
        let def = definition();
        let visible: Vec<&str> = def
            .get_subcommands()
            .filter(|c| !c.is_hide_set())
            .map(|c| c.get_name())
            .collect();
        assert!(visible.contains(&"check-config") && visible.contains(&"completions"));
        for name in &visible {
            Cli::try_parse_from(["cambackup", name, "--help"])
                .map(|_| ())
                .or_else(|e| {
                    (e.kind() == clap::error::ErrorKind::DisplayHelp)
                        .then_some(())
                        .ok_or(e)
                })
                .unwrap_or_else(|e| panic!("the parser refuses `{name}`: {e}"));
        }
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(shell.script()).unwrap();
            for name in visible
                .iter()
                .chain(&["--socket", "--config", "--region", "--dry-run"])
            {
                let name = name.trim_start_matches('-');
                assert!(script.contains(name), "{shell:?}: no `{name}` in\n{script}");
            }
        }
        // One page for the command and one for each subcommand, which its SEE ALSO names.
        let dir = tempfile::tempdir().unwrap();
        clap_mangen::generate_to(definition(), dir.path()).unwrap();
        let page = std::fs::read_to_string(dir.path().join("cambackup.1")).unwrap();
        assert!(page.contains(".TH cambackup 1"), "{page}");
        for name in &visible {
            assert!(
                page.contains(&format!("cambackup\\-{}(1)", name.replace('-', "\\-"))),
                "{name}: {page}"
            );
            let sub = dir.path().join(format!("cambackup-{name}.1"));
            assert!(sub.exists(), "no man page for `{name}`");
        }
        assert!(
            page.contains("\\-\\-socket") && page.contains(VERSION),
            "{page}"
        );
        let pair = std::fs::read_to_string(dir.path().join("cambackup-pair.1")).unwrap();
        assert!(pair.contains("\\-\\-region"), "{pair}");
    }

    #[test]
    fn pair_usage_names_region() {
        let mut def = definition();
        let usage = def
            .find_subcommand_mut("pair")
            .unwrap()
            .render_usage()
            .to_string();
        assert!(usage.contains("--region"), "{usage}");
    }

    #[test]
    fn version_names_the_commit() {
        // `0.1.0 (1a2b3c4)`, or `(unknown)` from a tarball.
        let v = Cli::try_parse_from(["cambackup", "--version"])
            .unwrap_err()
            .to_string();
        assert!(
            v.starts_with(&format!("cambackup {} (", env!("CARGO_PKG_VERSION"))),
            "{v}"
        );
        let commit = v.trim().rsplit_once('(').unwrap().1.trim_end_matches(')');
        assert!(
            commit == "unknown"
                || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
            "{v}"
        );
    }

    #[test]
    fn socket_goes_before_or_after_the_subcommand() {
        let a = Cli::try_parse_from(["cambackup", "--socket", "/tmp/s", "status"]).unwrap();
        let b =
            Cli::try_parse_from(["cambackup", "status", "--socket", "/tmp/s", "--json"]).unwrap();
        assert_eq!(a.socket.as_deref(), Some(Path::new("/tmp/s")));
        assert_eq!(b.socket.as_deref(), Some(Path::new("/tmp/s")));
        assert!(matches!(b.command, Command::Status { json: true }));
        let d = Cli::try_parse_from(["cambackup", "daemon", "--config", "/x.toml"]).unwrap();
        assert!(!d.command.is_client());
        assert_eq!(d.config.as_deref(), Some(Path::new("/x.toml")));
    }

    #[test]
    fn usage_errors_exit_2() {
        for argv in [
            &["cambackup"][..],
            &["cambackup", "upload"],
            &["cambackup", "retry", "x"],
            &["cambackup", "queue", "--state", "lost"],
            &["cambackup", "pair", "--user-id", "u"],
            &["cambackup", "frobnicate"],
        ] {
            let e = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{argv:?}");
        }
    }

    #[test]
    fn setting_values_parse_by_key() {
        assert_eq!(parse_setting("auto_upload", "on").unwrap(), json!(true));
        assert_eq!(
            parse_setting("max_rate_kib_per_sec", "512").unwrap(),
            json!(512)
        );
        assert_eq!(
            parse_setting("schedule", "01:00-07:00, 22:00-23:30").unwrap(),
            json!(["01:00-07:00", "22:00-23:30"])
        );
        assert_eq!(parse_setting("schedule", "").unwrap(), json!([]));
        assert!(parse_setting("schedule", "1am-7am")
            .unwrap_err()
            .contains("`schedule`"));
        assert!(parse_setting("max_rate_kib_per_sec", "fast")
            .unwrap_err()
            .contains("`max_rate_kib_per_sec`"));
        assert_eq!(
            parse_setting("require_idle", "false").unwrap(),
            json!(false)
        );
        assert_eq!(
            parse_setting("network", "unmetered").unwrap(),
            json!("unmetered")
        );
        assert_eq!(
            parse_setting("data_types", "photo, video").unwrap(),
            json!(["photo", "video"])
        );
        assert_eq!(parse_setting("data_types", "").unwrap(), json!([]));
        assert!(parse_setting("network", "5g")
            .unwrap_err()
            .contains("`network`"));
        assert!(parse_setting("auto_upload", "maybe")
            .unwrap_err()
            .contains("`auto_upload`"));
        assert!(parse_setting("data_types", "audio")
            .unwrap_err()
            .contains("`data_types`"));
        assert!(parse_setting("colour", "red")
            .unwrap_err()
            .contains("`colour`"));
        // Issue 22 item 10: a setting without a word of its own here is read by its type.
        assert_eq!(parse_setting("cellular_daily_mib", "5").unwrap(), json!(5));
        assert!(parse_setting("cellular_daily_mib", "lots")
            .unwrap_err()
            .contains("`cellular_daily_mib`"));
        // Checked as the API checks it.
        let over = format!("{}", crate::settings::MAX_CELLULAR_DAILY_MIB + 1);
        assert!(parse_setting("cellular_daily_mib", &over)
            .unwrap_err()
            .contains("`cellular_daily_mib`"));
    }

    /// The CLI's settings are the settings type's fields, the same as the API's patch takes,
    /// and `settings --help` describes each.
    #[test]
    fn the_cli_knows_every_setting_the_api_takes() {
        use clap::CommandFactory;
        let names = setting_names();
        assert!(names.len() >= 9, "{names:?}");
        assert_eq!(names[0], "auto_upload", "the consent is shown first");
        assert_eq!(
            names,
            struct_fields::<crate::settings::SettingsPatch>(),
            "PATCH /v1/settings and `settings` differ"
        );
        let cmd = Cli::command();
        let help = cmd
            .find_subcommand("settings")
            .and_then(|c| c.get_long_about())
            .unwrap()
            .to_string();
        for n in names {
            assert!(help.contains(n), "`settings --help` does not describe {n}");
        }
    }

    /// Every setting, walked: its default value written as a user types it (as `settings`
    /// prints it), read by `parse_setting`, and taken by the API's patch, which checks it and
    /// gives back the same value. A setting the CLI cannot set fails here by name.
    #[test]
    fn every_setting_goes_from_the_cli_through_the_api_with_its_value() {
        use crate::settings::{Settings, SettingsPatch};
        let defaults = Settings::default();
        let values = serde_json::to_value(&defaults).unwrap();
        let names: Vec<&str> = values
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut cli = setting_names().to_vec();
        cli.sort();
        assert_eq!(
            cli, names,
            "the CLI's settings and the settings type differ"
        );
        // Sample values other than the defaults too, where the default is empty or zero.
        let samples: &[(&str, &str)] = &[
            ("schedule", "01:00-07:00"),
            ("max_rate_kib_per_sec", "512"),
            ("cellular_daily_mib", "5"),
            ("auto_upload", "true"),
            ("free_space", "when_low"),
            ("network", "any"),
        ];
        let typed = names
            .iter()
            .map(|&n| (n, render::setting_value(&values[n])));
        let more = samples.iter().map(|&(n, v)| (n, v.to_string()));
        for (name, typed) in typed.chain(more) {
            let value = parse_setting(name, &typed)
                .unwrap_or_else(|e| panic!("`settings {name} {typed}` refused: {e}"));
            let patch: SettingsPatch =
                serde_json::from_value(serde_json::json!({ name: value.clone() }))
                    .unwrap_or_else(|e| panic!("the API refuses `{name}` = {value}: {e}"));
            patch
                .validate()
                .unwrap_or_else(|e| panic!("the API refuses `{name}` = {value}: {e}"));
            let applied = serde_json::to_value(defaults.apply(&patch)).unwrap();
            assert_eq!(applied[name], value, "`settings {name} {typed}`");
        }
    }

    #[test]
    fn socket_from_the_config_file() {
        let text = "[device]\ntype = \"x\"\n[control]\nsocket = \"/run/x.sock\"\n";
        assert_eq!(
            socket_from_config(text).unwrap(),
            Some(PathBuf::from("/run/x.sock"))
        );
        assert_eq!(socket_from_config("[device]\n").unwrap(), None);
        assert!(socket_from_config("[control\n").is_err());
    }

    #[test]
    fn token_file_is_trimmed_of_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "s3cr3t\r\n").unwrap();
        assert_eq!(read_token(&f).unwrap(), "s3cr3t");
        std::fs::write(&f, "\n").unwrap();
        assert_eq!(read_token(&f).unwrap_err().code, 2);
    }

    #[test]
    fn sse_blocks_split_across_reads() {
        let mut p = SseParser::default();
        assert!(p.feed(b"event: state\ndata: {\"state\":").is_empty());
        let got = p.feed(b"\"idle\"}\n\n:\n\nevent: item\ndata: {}\n\n");
        assert_eq!(
            got,
            vec![
                ("state".to_string(), "{\"state\":\"idle\"}".to_string()),
                ("item".to_string(), "{}".to_string())
            ]
        );
    }
}
