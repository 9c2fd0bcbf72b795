//! IMAP framing with bounds: whole responses (a line and the literals it announces) read from a
//! server that may be hostile, so that no announced size, endless line or endless stream of
//! untagged data costs more than a few KiB. Parsing is imap-proto's.

use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader};

/// Longest response (a line and its literals). A probe's answers are a few hundred bytes.
pub const MAX_RESPONSE: usize = 16 * 1024;
/// Most bytes read from one connection.
const MAX_TOTAL: usize = 64 * 1024;

/// Why no response could be read.
#[derive(Debug)]
pub enum WireError {
    Io(std::io::Error),
    /// The server closed the connection.
    Closed,
    /// A response, or the connection's total, went over the bounds.
    TooLong,
}

/// One connection to an IMAP server.
pub struct Wire<S> {
    stream: BufReader<S>,
    read: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub fn new(stream: S) -> Self {
        Self { stream: BufReader::new(stream), read: 0 }
    }

    /// Writes `line` (CRLF included) and flushes it.
    pub async fn send(&mut self, line: &[u8]) -> std::io::Result<()> {
        let stream = self.stream.get_mut();
        stream.write_all(line).await?;
        stream.flush().await
    }

    /// The next whole response, raw, for `imap_proto::parser::parse_response`.
    pub async fn response(&mut self) -> Result<Vec<u8>, WireError> {
        let mut response = Vec::with_capacity(256);
        loop {
            let room = MAX_RESPONSE.saturating_sub(response.len()).min(MAX_TOTAL.saturating_sub(self.read));
            let before = response.len();
            let n =
                (&mut self.stream).take(room as u64).read_until(b'\n', &mut response).await.map_err(WireError::Io)?;
            self.read += n;
            if n == 0 {
                return Err(if room == 0 { WireError::TooLong } else { WireError::Closed });
            }
            if !response.ends_with(b"\n") {
                return Err(if n == room { WireError::TooLong } else { WireError::Closed });
            }
            let Some(size) = literal_size(&response[before..]) else { return Ok(response) };
            if size > MAX_RESPONSE.saturating_sub(response.len()) || size > MAX_TOTAL.saturating_sub(self.read) {
                return Err(WireError::TooLong);
            }
            let start = response.len();
            response.resize(start + size, 0);
            self.stream.read_exact(&mut response[start..]).await.map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => WireError::Closed,
                _ => WireError::Io(e),
            })?;
            self.read += size;
        }
    }
}

/// The size of the literal a line announces at its end (`{12}` or `{12+}` before CRLF).
fn literal_size(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = line.strip_suffix(b"}")?;
    let line = line.strip_suffix(b"+").unwrap_or(line);
    let open = line.iter().rposition(|b| *b == b'{')?;
    let digits = &line[open + 1..];
    if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    async fn read_from(server_bytes: &[u8]) -> (Result<Vec<u8>, WireError>, Wire<tokio::io::DuplexStream>) {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        theirs.write_all(server_bytes).await.unwrap();
        drop(theirs);
        let mut wire = Wire::new(ours);
        (wire.response().await, wire)
    }

    #[test]
    fn finds_literal_sizes() {
        assert_eq!(literal_size(b"* 1 FETCH (BODY[] {12}\r\n"), Some(12));
        assert_eq!(literal_size(b"* ID (\"name\" {3+}\r\n"), Some(3));
        assert_eq!(literal_size(b"V1 OK done\r\n"), None);
        assert_eq!(literal_size(b"* OK {}\r\n"), None);
        assert_eq!(literal_size(b"* OK {9999999999}\r\n"), None);
    }

    #[tokio::test]
    async fn reads_a_response_with_its_literal() {
        let (got, mut wire) = read_from(b"* ID (\"name\" {5}\r\nhello)\r\nV2 OK ID completed\r\n").await;
        assert_eq!(got.unwrap(), b"* ID (\"name\" {5}\r\nhello)\r\n");
        assert_eq!(wire.response().await.unwrap(), b"V2 OK ID completed\r\n");
        assert!(matches!(wire.response().await, Err(WireError::Closed)));
    }

    #[tokio::test]
    async fn a_huge_announced_literal_is_refused_before_any_allocation() {
        let (got, _) = read_from(b"* 1 FETCH (BODY[] {536000000}\r\n").await;
        assert!(matches!(got, Err(WireError::TooLong)), "{got:?}");
    }

    #[tokio::test]
    async fn an_endless_line_and_an_endless_stream_are_cut_off() {
        let (got, _) = read_from(&vec![b'a'; MAX_RESPONSE + 10]).await;
        assert!(matches!(got, Err(WireError::TooLong)), "{got:?}");
        let many: Vec<u8> = b"* OK still here\r\n".repeat(MAX_TOTAL / 10);
        let (first, mut wire) = read_from(&many).await;
        assert!(first.is_ok());
        let mut last = Ok(Vec::new());
        for _ in 0..MAX_TOTAL {
            last = wire.response().await;
            if last.is_err() {
                break;
            }
        }
        assert!(matches!(last, Err(WireError::TooLong)), "{last:?}");
    }
}
