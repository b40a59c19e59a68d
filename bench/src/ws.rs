//! The `org.hearth.ws` stream (spec/websocket.md) as a benchmark receiver: one WebSocket whose
//! `sync` frames carry exactly what incremental `/sync` responses would.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use tokio::net::{TcpSocket, TcpStream, lookup_host};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, client_async,
    tungstenite::{Message, client::IntoClientRequest},
};
use url::Url;

const PATH: &str = "/_matrix/client/unstable/org.hearth.ws/v1/stream";

/// How the receivers of `deliver` and `connections` follow their rooms.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// `GET /sync` long-polls.
    #[default]
    LongPoll,
    /// The `org.hearth.ws` WebSocket stream (Hearth only).
    Ws,
}

impl Transport {
    /// As written on the command line and in the JSON parameters.
    pub fn name(self) -> &'static str {
        match self {
            Transport::LongPoll => "long-poll",
            Transport::Ws => "ws",
        }
    }
}

pub struct SyncStream {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl SyncStream {
    /// Opens a stream from `since` with an inline `filter`, from `local` when given.
    pub async fn connect(
        base: &Url,
        token: &str,
        since: Option<&str>,
        filter: Option<&str>,
        local: Option<IpAddr>,
    ) -> Result<Self> {
        let mut url = base.clone();
        url.set_scheme(if base.scheme() == "https" { "wss" } else { "ws" })
            .map_err(|()| anyhow!("cannot make a WebSocket URL of {base}"))?;
        url.set_path(PATH);
        {
            let mut q = url.query_pairs_mut();
            if let Some(since) = since {
                q.append_pair("since", since);
            }
            if let Some(filter) = filter {
                q.append_pair("filter", filter);
            }
        }
        let host = url.host_str().context("URL without host")?.to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let addr: SocketAddr = lookup_host((host.as_str(), port))
            .await?
            .next()
            .context("host has no address")?;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(local) = local {
            socket.bind(SocketAddr::new(local, 0))?;
        }
        let stream = socket.connect(addr).await.context("connecting the stream")?;
        stream.set_nodelay(true)?;
        let mut request = url.as_str().into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let (ws, _) = client_async(request, MaybeTlsStream::Plain(stream))
            .await
            .context("WebSocket handshake")?;
        Ok(Self { ws })
    }

    /// The next `sync` frame, read as a receiver reads it (`digest`); other frames are skipped,
    /// pings are answered by the library.
    pub async fn next_digest(&mut self, run_id: &str) -> Result<crate::digest::SyncDigest> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    if let Some(digest) = crate::digest::stream_frame(text.as_str(), run_id)? {
                        return Ok(digest);
                    }
                }
                Some(Ok(Message::Close(frame))) => bail!("stream closed: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("stream ended"),
            }
        }
    }
}

/// The next step for a receiver following `since` over a stream: opens it (from `since`) when
/// there is none, and forgets it when it fails so that the next call reconnects from the last
/// token the caller kept.
pub async fn next_streamed_digest(
    api: &crate::matrix::Api,
    stream: &mut Option<SyncStream>,
    token: &str,
    since: &str,
    filter: Option<&str>,
    run_id: &str,
) -> Result<crate::digest::SyncDigest> {
    let open = match stream {
        Some(open) => open,
        None => stream.insert(api.stream(token, Some(since), filter).await?),
    };
    let digest = open.next_digest(run_id).await;
    if digest.is_err() {
        *stream = None;
    }
    digest
}
