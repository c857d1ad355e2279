//! Artifact upload from a file, as `bsfg put-object` and the demo do it:
//! the file's digest is computed first and sent as the expected digest, so
//! the node refuses bytes damaged on the way.

use bsfg::client::BsfgClient;
use bsfg_proto::bsfg::v1::{PutObjectHeader, PutObjectResponse};
use std::time::Duration;

/// `sha256:<hex>` of a file.
pub fn file_digest(path: &std::path::Path) -> anyhow::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// Uploads a file in 256 KiB chunks with the expected digest, so the node
/// refuses it if the bytes are damaged on the way.
pub async fn put_file(
    client: &BsfgClient,
    bucket: &str,
    key: &str,
    file: &std::path::Path,
    media_type: &str,
    progress: bool,
) -> anyhow::Result<PutObjectResponse> {
    const CHUNK_BYTES: usize = 256 * 1024;
    let size = std::fs::metadata(file)?.len();
    let digest = file_digest(file)?;
    let bar = if progress {
        indicatif::ProgressBar::new(size)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template"),
    );
    let header = PutObjectHeader {
        bucket: bucket.into(),
        key: key.into(),
        media_type: media_type.into(),
        expected_digest: digest,
        expected_size_bytes: size,
        ..Default::default()
    };
    let reader = tokio::fs::File::open(file).await?;
    let bar_in = bar.clone();
    let chunks = futures::stream::unfold(reader, move |mut reader| {
        let bar = bar_in.clone();
        async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; CHUNK_BYTES];
            let mut filled = 0;
            while filled < CHUNK_BYTES {
                match reader.read(&mut buf[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(_) => break,
                }
            }
            if filled == 0 {
                return None;
            }
            buf.truncate(filled);
            bar.inc(filled as u64);
            Some((buf, reader))
        }
    });
    let timeout = Duration::from_secs(60 + size / (1024 * 1024));
    let r = client.put_object(header, chunks, timeout).await;
    bar.finish_and_clear();
    Ok(r?)
}
