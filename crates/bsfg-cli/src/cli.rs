//! The `bsfg` command line: run a node, and talk to one.
//!
//! Errors print the Connect code and the node's message; the exit code is
//! 1 for a refused or failed call and 2 for bad usage or configuration.

use crate::status_table::render_status;
use crate::upload::{file_digest, put_file};
use bsfg::client::BsfgClient;
use bsfg::config::ZoneConfig;
use bsfg_proto::bsfg::v1::*;
use clap::{Parser, Subcommand};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

/// What `bsfg demo` runs (its `--dir`, `--single-zone` and `--ha`). The
/// binary passes it in, so that the command line and the demo do not
/// depend on each other.
pub type Demo =
    fn(Option<PathBuf>, bool, bool) -> Pin<Box<dyn Future<Output = anyhow::Result<()>>>>;

#[derive(Parser)]
#[command(
    name = "bsfg",
    version,
    about = "Bidirectional Store-and-Forward Gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Target {
    /// Boundary URL of the zone node (https:// with mutual TLS); the nodes
    /// of a zone of several, comma-separated (the next is tried when one
    /// cannot be reached or is a standby).
    #[arg(long, env = "BSFG_URL", default_value = "https://127.0.0.1:7443")]
    url: String,
    /// Site CA (PEM) to trust.
    #[arg(long, env = "BSFG_CA")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) naming a principal of the zone.
    #[arg(long, env = "BSFG_CERT")]
    cert: Option<PathBuf>,
    /// Its private key (PEM). Named --tls-key because --key names an
    /// object key in put-object and get-object.
    #[arg(long = "tls-key", env = "BSFG_KEY")]
    tls_key: Option<PathBuf>,
}

impl Target {
    fn client(&self) -> anyhow::Result<BsfgClient> {
        BsfgClient::from_files(
            &self.url,
            self.ca.as_deref(),
            self.cert.as_deref(),
            self.tls_key.as_deref(),
        )
    }
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a development CA (ca.pem, ca.key) in DIR.
    Init {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value = "BSFG development CA")]
        name: String,
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// Issue NAME.pem / NAME.key signed by the CA in DIR, usable for both
    /// server and client authentication (e.g. plant-a-bsfg, mes.plant-a).
    Issue {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        /// Extra SANs: the host names or IPs a node is reached at (e.g.
        /// --san localhost --san 127.0.0.1); client certificates need none.
        #[arg(long = "san")]
        sans: Vec<String>,
        #[arg(long, default_value_t = 397)]
        days: i64,
    },
}

#[derive(Subcommand)]
enum SiteCommand {
    /// Write DIR from TOPOLOGY (see examples/site/site.toml).
    Init {
        #[arg(long)]
        topology: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Where DIR is copied to on the hosts (the systemd units' paths).
        #[arg(long, default_value = "/etc/bsfg/site")]
        install_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check FILES (every zone of the site, or some of them).
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run a zone node.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Development PKI.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Check zone files: each alone, then together as one site (links,
    /// ports, routes, categories, certificates). Exit code 1 on an error.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// A site from one description: zone files, development PKI, systemd
    /// units and a README per zone.
    #[command(subcommand)]
    Site(SiteCommand),
    /// Start the reference site (enterprise, idmz, plant-a, plant-b) on this
    /// machine, move facts and an artifact both ways, cut and restore the
    /// idmz-enterprise link, and show what happened.
    Demo {
        /// Directory for the zones' data (default: a fresh temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Instead: one local zone (plant-a), walked through the contract.
        #[arg(long, conflicts_with = "ha")]
        single_zone: bool,
        /// Instead: one zone (plant-a) on a three-server JetStream cluster
        /// with two nodes; the writer and a nats-server are killed under
        /// appends, and nothing acknowledged is lost or stored twice.
        #[arg(long)]
        ha: bool,
    },
    /// Append one fact.
    Append(AppendArgs),
    /// Append the facts of a JSON-lines file (one AppendFact request in
    /// proto JSON per line, message ids required), in order, through
    /// AppendFacts; a second run appends nothing twice. Exit code 1 if a
    /// fact was refused, 2 if a line is malformed.
    AppendFile(AppendFileArgs),
    /// Fetch the next facts of a consumer (JSON, one fact per line).
    Fetch(FetchArgs),
    /// Show the writer role and lease, the store servers' replica lag, links
    /// (mode, frontier, backlog, lag, last confirmation) and consumers.
    Status(StatusArgs),
    /// Replay: move a consumer back to an offset or a time (RFC 3339).
    ResetConsumer(ResetConsumerArgs),
    /// Confirm everything delivered up to and including an offset.
    Confirm(ConfirmArgs),
    /// Upload a file as an artifact.
    PutObject(PutObjectArgs),
    /// Download an artifact; resumes a partial output file.
    GetObject(GetObjectArgs),
}

// The subcommands' arguments. No doc comments on these structs: a
// subcommand's help text is the doc comment of its `Command` variant.

#[derive(clap::Args)]
struct AppendArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    from_zone: String,
    #[arg(long)]
    to_zone: String,
    /// Idempotency key with from_zone (default: random).
    #[arg(long)]
    message_id: Option<String>,
    #[arg(long)]
    subject: String,
    #[arg(long)]
    predicate: String,
    /// The fact's object, a JSON object.
    #[arg(long)]
    json: String,
    /// key=value, repeatable.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// bucket/key=sha256:<hex>:<size>, repeatable.
    #[arg(long = "attach")]
    attachments: Vec<String>,
}

#[derive(clap::Args)]
struct AppendFileArgs {
    #[command(flatten)]
    target: Target,
    /// The JSON-lines file; `-` reads stdin.
    #[arg(long)]
    file: PathBuf,
}

#[derive(clap::Args)]
struct FetchArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    consumer: String,
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[arg(long, default_value_t = 0)]
    wait_ms: u32,
    /// Confirm what was fetched.
    #[arg(long)]
    confirm: bool,
}

#[derive(clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    target: Target,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ResetConsumerArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    consumer: String,
    #[arg(long, conflicts_with = "time")]
    offset: Option<u64>,
    #[arg(long)]
    time: Option<String>,
}

#[derive(clap::Args)]
struct ConfirmArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    consumer: String,
    #[arg(long)]
    offset: u64,
}

#[derive(clap::Args)]
struct PutObjectArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    bucket: String,
    #[arg(long)]
    key: String,
    #[arg(long)]
    file: PathBuf,
    #[arg(long, default_value = "application/octet-stream")]
    media_type: String,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct GetObjectArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    bucket: String,
    #[arg(long)]
    key: String,
    #[arg(long)]
    out: PathBuf,
}

/// Parses the command line, runs the subcommand and maps its outcome to the
/// exit code; `demo` is what `bsfg demo` runs.
pub fn main(demo: Demo) -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli, demo)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<crate::config_check::ChecksFailed>()
                .is_some() =>
        {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            if let Some(c) = e.downcast_ref::<connectrpc::ConnectError>() {
                eprintln!(
                    "error: {}: {}",
                    c.code.as_str(),
                    c.message.clone().unwrap_or_default()
                );
                ExitCode::from(1)
            } else {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        }
    }
}

/// One function per subcommand.
async fn run(cli: Cli, demo: Demo) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve(&config).await,
        Command::Demo {
            dir,
            single_zone,
            ha,
        } => demo(dir, single_zone, ha).await,
        Command::Certs(command) => certs(command),
        Command::Config(ConfigCommand::Check { files }) => crate::config_check::run(&files),
        Command::Site(SiteCommand::Init {
            topology,
            out,
            install_dir,
        }) => crate::site_init::run(&topology, &out, &install_dir),
        Command::Append(args) => append(args).await,
        Command::AppendFile(args) => append_file(args).await,
        Command::Fetch(args) => fetch(args).await,
        Command::Status(args) => status(args).await,
        Command::ResetConsumer(args) => reset_consumer(args).await,
        Command::Confirm(args) => confirm(args).await,
        Command::PutObject(args) => put_object(args).await,
        Command::GetObject(args) => get_object(args).await,
    }
}

/// `bsfg serve`: run a zone node until it fails or is told to stop.
async fn serve(config: &std::path::Path) -> anyhow::Result<()> {
    let _log_guard = bsfg::logs::init();
    let config = ZoneConfig::load(config)?;
    let node = bsfg::node::start(config).await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = node.wait() => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = terminate.recv() => Ok(()),
    };
    tracing::info!("zone node stopping");
    result
}

/// `bsfg certs init|issue`.
fn certs(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init { dir, name, days } => {
            let issued = bsfg::tls::pki::init_ca(&dir, &name, days)?;
            println!(
                "{}",
                serde_json::json!({"ca": issued.cert, "key": issued.key})
            );
        }
        CertsCommand::Issue {
            dir,
            name,
            sans,
            days,
        } => {
            let mut request = bsfg::tls::pki::IssueRequest::new(&name, days);
            request.extra_sans.extend(sans);
            let issued = bsfg::tls::pki::issue(&dir, &dir, &request)?;
            println!(
                "{}",
                serde_json::json!({"cert": issued.cert, "key": issued.key})
            );
        }
    }
    Ok(())
}

/// `bsfg append-file` (`crate::append_file`).
async fn append_file(args: AppendFileArgs) -> anyhow::Result<()> {
    let client = args.target.client()?;
    let outcome = if args.file.as_os_str() == "-" {
        crate::append_file::run(&client, std::io::stdin().lock()).await
    } else {
        let file = std::fs::File::open(&args.file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
        crate::append_file::run(&client, std::io::BufReader::new(file)).await
    };
    match outcome {
        Ok(crate::append_file::Outcome::Stored) => Ok(()),
        Ok(crate::append_file::Outcome::Refused) => {
            eprintln!("some facts were refused: see their lines' reason and message");
            std::process::exit(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2)
        }
    }
}

/// `bsfg append`.
async fn append(args: AppendArgs) -> anyhow::Result<()> {
    let client = args.target.client()?;
    let mut envelope = Envelope {
        message_id: args
            .message_id
            .unwrap_or_else(|| format!("cli-{}", hex::encode(rand::random::<[u8; 8]>()))),
        from_zone: args.from_zone,
        to_zone: args.to_zone,
        produced_at_unix_ms: bsfg::store::now_unix_ms(),
        ..Default::default()
    };
    for label in args.labels {
        let (k, v) = label
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--label {label:?}: expected key=value"))?;
        envelope.labels.insert(k.into(), v.into());
    }
    let attachments = args
        .attachments
        .iter()
        .map(|a| parse_attachment(a))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let fact = Fact {
        subject: args.subject,
        predicate: args.predicate,
        object_json: args.json,
        attachments,
        ..Default::default()
    };
    let r = client.append(envelope.clone(), fact).await?;
    println!(
        "{}",
        serde_json::json!({"offset": r.offset, "duplicate": r.duplicate, "category": r.category, "message_id": envelope.message_id})
    );
    Ok(())
}

/// `bsfg fetch`.
async fn fetch(args: FetchArgs) -> anyhow::Result<()> {
    let FetchArgs {
        target,
        consumer,
        limit,
        wait_ms,
        confirm,
    } = args;
    let client = target.client()?;
    let r = client.fetch(&consumer, limit, 0, wait_ms).await?;
    for fact in &r.facts {
        println!("{}", serde_json::to_string(fact)?);
    }
    // last_delivered_offset also covers facts the policy withheld.
    if confirm && r.last_delivered_offset > r.frontier {
        let frontier = client.confirm(&consumer, r.last_delivered_offset).await?;
        eprintln!("confirmed through offset {frontier}");
    }
    Ok(())
}

/// `bsfg status`.
async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let status = args.target.client()?.status().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render_status(&status));
    }
    Ok(())
}

/// `bsfg reset-consumer`.
async fn reset_consumer(args: ResetConsumerArgs) -> anyhow::Result<()> {
    use bsfg_proto::bsfg::v1::reset_consumer_request::Position;
    let ResetConsumerArgs {
        target,
        consumer,
        offset,
        time,
    } = args;
    let position = match (offset, time) {
        (Some(o), None) => Position::Offset(o),
        (None, Some(t)) => {
            let t = time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                .map_err(|e| anyhow::anyhow!("--time {t:?} is not RFC 3339: {e}"))?;
            Position::TimeUnixMs((t.unix_timestamp_nanos() / 1_000_000) as i64)
        }
        _ => anyhow::bail!("give --offset or --time"),
    };
    let frontier = target.client()?.reset_consumer(&consumer, position).await?;
    println!(
        "{}",
        serde_json::json!({"consumer": consumer, "frontier": frontier})
    );
    Ok(())
}

/// `bsfg confirm`.
async fn confirm(args: ConfirmArgs) -> anyhow::Result<()> {
    let client = args.target.client()?;
    let frontier = client.confirm(&args.consumer, args.offset).await?;
    println!("{}", serde_json::json!({"frontier": frontier}));
    Ok(())
}

/// `bsfg put-object`.
async fn put_object(args: PutObjectArgs) -> anyhow::Result<()> {
    let PutObjectArgs {
        target,
        bucket,
        key,
        file,
        media_type,
        quiet,
    } = args;
    let client = target.client()?;
    let r = put_file(&client, &bucket, &key, &file, &media_type, !quiet).await?;
    println!(
        "{}",
        serde_json::json!({"bucket": r.bucket, "key": r.key, "digest": r.digest, "size_bytes": r.size_bytes})
    );
    Ok(())
}

/// `bsfg get-object`: appends to `--out`, so a partial file resumes.
async fn get_object(args: GetObjectArgs) -> anyhow::Result<()> {
    let GetObjectArgs {
        target,
        bucket,
        key,
        out,
    } = args;
    let client = target.client()?;
    let start = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out)?;
    let info = client
        .get_object(
            &bucket,
            &key,
            start,
            Duration::from_secs(3600),
            |_, chunk| {
                use std::io::Write;
                file.write_all(chunk)?;
                Ok(())
            },
        )
        .await?;
    file.sync_all()?;
    let digest = file_digest(&out)?;
    if digest != info.digest {
        anyhow::bail!(
            "downloaded file hashes to {digest}, the node says {}; delete {} and download again",
            info.digest,
            out.display()
        );
    }
    println!(
        "{}",
        serde_json::json!({"bucket": info.bucket, "key": info.key, "digest": info.digest, "size_bytes": info.size_bytes, "resumed_from": start})
    );
    Ok(())
}

fn parse_attachment(text: &str) -> anyhow::Result<AttachmentRef> {
    let bad = || anyhow::anyhow!("--attach {text:?}: expected bucket/key=sha256:<hex>:<size>");
    let (path, rest) = text.split_once('=').ok_or_else(bad)?;
    let (bucket, key) = path.split_once('/').ok_or_else(bad)?;
    let (digest, size) = rest.rsplit_once(':').ok_or_else(bad)?;
    Ok(AttachmentRef {
        bucket: bucket.into(),
        key: key.into(),
        digest: digest.into(),
        size_bytes: size.parse().map_err(|_| bad())?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        // Catches duplicate argument names (e.g. two different --key).
        Cli::command().debug_assert();
    }

    #[test]
    fn object_key_and_tls_key_are_distinct() {
        let cli = Cli::try_parse_from([
            "bsfg",
            "put-object",
            "--url",
            "https://n:7443",
            "--ca",
            "ca.pem",
            "--cert",
            "app.pem",
            "--tls-key",
            "app.key",
            "--bucket",
            "records",
            "--key",
            "batch/B1/record.pdf",
            "--file",
            "record.pdf",
        ])
        .expect("parses");
        match cli.command {
            Command::PutObject(args) => {
                assert_eq!(args.key, "batch/B1/record.pdf");
                assert_eq!(
                    args.target.tls_key.as_deref(),
                    Some(std::path::Path::new("app.key"))
                );
            }
            _ => panic!("expected put-object"),
        }
    }
}
