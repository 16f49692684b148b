//! A tiny HTTP/1.1 client over `std::net::TcpStream`: exact status codes, raw bodies and SSE
//! bytes, and a socket the test can drop mid-stream to play a disconnecting client.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

const IO_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }
}

pub fn get(port: u16, path: &str, api_key: Option<&str>) -> io::Result<Response> {
    request(port, "GET", path, api_key, None)
}

pub fn post_json(
    port: u16,
    path: &str,
    api_key: Option<&str>,
    body: &Value,
) -> io::Result<Response> {
    request(
        port,
        "POST",
        path,
        api_key,
        Some(body.to_string().as_bytes()),
    )
}

/// One request on a fresh connection (`Connection: close`), read to the end.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    api_key: Option<&str>,
    body: Option<&[u8]>,
) -> io::Result<Response> {
    let mut stream = send(port, method, path, api_key, body)?;
    let mut reader = BufReader::new(&mut stream);
    let (status, headers) = read_head(&mut reader)?;
    let chunked = is_chunked(&headers);
    let mut body = Vec::new();
    if chunked {
        while let Some(chunk) = read_chunk(&mut reader)? {
            body.extend_from_slice(&chunk);
        }
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn send(
    port: u16,
    method: &str,
    path: &str,
    api_key: Option<&str>,
    body: Option<&[u8]>,
) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if let Some(key) = api_key {
        head.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if let Some(body) = body {
        stream.write_all(body)?;
    }
    Ok(stream)
}

fn read_head(reader: &mut impl BufRead) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.trim_end().split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    Ok((status, headers))
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    })
}

/// Next chunk of a chunked body; None after the last (zero-length) chunk.
fn read_chunk(reader: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let size_hex = line.trim().split(';').next().unwrap_or_default();
    let size = usize::from_str_radix(size_hex, 16)
        .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
    if size == 0 {
        return Ok(None);
    }
    let mut chunk = vec![0u8; size];
    reader.read_exact(&mut chunk)?;
    let mut crlf = [0u8; 2];
    reader.read_exact(&mut crlf)?;
    Ok(Some(chunk))
}

/// An open server-sent-events response, read event by event.
pub struct EventStream {
    reader: BufReader<TcpStream>,
    chunked: bool,
    buffer: Vec<u8>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl EventStream {
    /// POSTs `body` and reads the response head; the body is read lazily.
    pub fn open(port: u16, path: &str, api_key: Option<&str>, body: &Value) -> io::Result<Self> {
        let stream = send(
            port,
            "POST",
            path,
            api_key,
            Some(body.to_string().as_bytes()),
        )?;
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader)?;
        let chunked = is_chunked(&headers);
        Ok(Self {
            reader,
            chunked,
            buffer: Vec::new(),
            status,
            headers,
        })
    }

    /// The `data:` payload of the next event; None at the end of the stream.
    pub fn next_data(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(end) = find(&self.buffer, b"\n\n") {
                let event: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&event);
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if data.is_empty() {
                    continue; // comment or keep-alive
                }
                return Ok(Some(data.join("\n")));
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    fn fill(&mut self) -> io::Result<bool> {
        if self.chunked {
            return Ok(match read_chunk(&mut self.reader)? {
                Some(chunk) => {
                    self.buffer.extend_from_slice(&chunk);
                    true
                }
                None => false,
            });
        }
        let mut buf = [0u8; 4096];
        let n = self.reader.read(&mut buf)?;
        self.buffer.extend_from_slice(&buf[..n]);
        Ok(n > 0)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_bodies() {
        let raw = b"4\r\nWiki\r\n6;x=y\r\npedia \r\n0\r\n\r\n";
        let mut reader = &raw[..];
        let mut body = Vec::new();
        while let Some(chunk) = read_chunk(&mut reader).expect("valid chunks") {
            body.extend_from_slice(&chunk);
        }
        assert_eq!(body, b"Wikipedia ");
    }

    #[test]
    fn parses_heads() {
        let raw = b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (status, headers) = read_head(&mut &raw[..]).expect("valid head");
        assert_eq!(status, 401);
        assert!(is_chunked(&headers));
        assert_eq!(
            headers[0],
            ("content-type".to_owned(), "application/json".to_owned())
        );
    }
}
