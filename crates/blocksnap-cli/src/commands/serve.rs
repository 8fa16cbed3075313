//! `blocksnap serve …`: serve a snapshot to other programs without restoring it first.

use clap::Subcommand;

use crate::Ctx;
use crate::parse::human;

#[derive(Debug, Subcommand)]
pub(crate) enum ServeCmd {
    /// Export a snapshot read-only over NBD: usable at once, its chunks fetched, verified and
    /// decoded as they are read (`qemu-img convert nbd://127.0.0.1:10809 disk.img`, `nbd-client`,
    /// or a VM booting from it). Serves each client on its own thread (up to --max-connections
    /// at once, sharing one chunk cache) until stopped (Ctrl-C); a client that sends nothing for
    /// --idle-timeout seconds is disconnected.
    Nbd {
        /// A snapshot (id or unique prefix), or IMAGE:DEVICE of an image you may launch.
        #[arg(value_name = "SNAPSHOT|IMAGE:DEVICE")]
        what: String,
        /// The address to listen on (port 0 picks a free one).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10809")]
        listen: String,
        /// Listen on an address other than loopback without TLS although the export is the
        /// decrypted disk, unencrypted and unauthenticated on the network: anyone who can reach
        /// the port reads it. Without it (or TLS), only loopback addresses (and --socket) are
        /// accepted.
        #[arg(long)]
        insecure: bool,
        /// Require TLS of every client (NBD_OPT_STARTTLS before any other option), with this
        /// certificate chain (PEM, server first); needs --tls-key. With TLS, any --listen address
        /// is allowed. qemu: `--object tls-creds-x509,id=tls0,dir=DIR,endpoint=client` and
        /// `tls-creds=tls0` on the nbd drive.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<std::path::PathBuf>,
        /// The private key of --tls-cert (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<std::path::PathBuf>,
        /// Require TLS with credentials in qemu's x509 layout: DIR/server-cert.pem and
        /// DIR/server-key.pem; if DIR/ca-cert.pem exists, clients must also present a
        /// certificate it signed (qemu's verify-peer).
        #[arg(long, value_name = "DIR", conflicts_with_all = ["tls_cert", "tls_key"])]
        tls_creds: Option<std::path::PathBuf>,
        /// Listen on this Unix socket instead of TCP (for a hypervisor on this host:
        /// `nbd+unix:///EXPORT?socket=PATH`). An existing file there is never replaced; a
        /// socket left by a killed server is.
        #[arg(long, value_name = "PATH", conflicts_with = "listen")]
        socket: Option<std::path::PathBuf>,
        /// Clients served at once; one more is disconnected at once, with a log line.
        #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
        max_connections: u16,
        /// Seconds a client may send nothing before it is disconnected.
        #[arg(long, value_name = "SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
        idle_timeout: u64,
        /// MiB of decoded chunks kept in memory for all clients to share (reading ahead
        /// included): the server's memory is about this plus 32 MiB per client.
        #[arg(long, value_name = "MIB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(16..=1 << 20))]
        cache_mib: u64,
    },
}

pub(crate) fn run(ctx: &Ctx<'_>, cmd: &ServeCmd) -> anyhow::Result<()> {
    match cmd {
        ServeCmd::Nbd {
            what,
            listen,
            max_connections,
            idle_timeout,
            socket,
            insecure,
            cache_mib,
            tls_cert,
            tls_key,
            tls_creds,
        } => {
            let tls = match (tls_cert, tls_key, tls_creds) {
                (_, _, Some(dir)) => Some(blocksnap_store::TlsFiles::from_dir(dir)),
                (Some(cert), Some(key), None) => Some(blocksnap_store::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: None,
                }),
                _ => None,
            };
            if socket.is_none() && !insecure && tls.is_none() && !is_loopback(listen) {
                return Err(blocksnap_store::StoreError::Usage(format!(
                    "--listen {listen} is not a loopback address: the export is the decrypted \
                     disk, readable by anyone who can reach the port. Require TLS \
                     (--tls-cert FILE --tls-key FILE, or --tls-creds DIR), listen on 127.0.0.1 \
                     or ::1, use --socket PATH for a hypervisor on this host, or pass \
                     --insecure on a network you trust"
                ))
                .into());
            }
            let store = ctx.open()?;
            let access = ctx.access(&store)?;
            // It runs until stopped: documents are read afresh, never as they were at the start.
            store.cache_documents(false);
            let opts = blocksnap_store::ServeOptions {
                max_connections: usize::from(*max_connections),
                idle_timeout: std::time::Duration::from_secs(*idle_timeout),
                socket: socket.clone(),
                cache_bytes: cache_mib << 20,
                tls,
            };
            store.serve_nbd(&access, what, listen, &opts, &ctx.progress, |info| {
                // Printed once listening; the command then serves until stopped.
                let _ = ctx.output(info, String::new);
                let url = match info.listen.strip_prefix("unix:") {
                    Some(path) => format!("nbd+unix:///{}?socket={path}", info.export),
                    None => format!("nbd://{}/{}", info.listen, info.export),
                };
                let tls = if info.tls {
                    " with TLS required (qemu: --object tls-creds-x509,...,endpoint=client and \
                     tls-creds=ID)"
                } else {
                    ""
                };
                ctx.note(&format!(
                    "serving {} ({}) read-only over NBD on {}{tls}: e.g. `qemu-img convert -O raw '{url}' disk.img`; Ctrl-C stops",
                    info.export,
                    human(info.size),
                    info.listen,
                ));
            })?;
            Ok(())
        }
    }
}

/// True if every address `listen` resolves to is a loopback one (an address that does not
/// resolve is left for the listener to refuse).
fn is_loopback(listen: &str) -> bool {
    use std::net::ToSocketAddrs;
    match listen.to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => true,
    }
}
