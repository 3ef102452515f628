//! A strict, bounded HTTP/1.1 request parser for the control server.
//!
//! One request per connection. The head may be at most [`MAX_HEAD`] bytes
//! (431 beyond), a body at most [`MAX_BODY`] (413); chunked bodies are not
//! accepted (400). Pure: bytes in, a verdict out.

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest body accepted (sup's endpoints take none).
pub const MAX_BODY: usize = 1024;
const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// The `Authorization` header, as sent.
    pub authorization: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    Request(Request),
    /// The status to answer with, and why.
    Error(u16, &'static str),
}

pub fn parse(buf: &[u8]) -> Parsed {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Parsed::Error(431, "request header fields too large")
        } else {
            Parsed::Incomplete
        };
    };
    if head_end > MAX_HEAD {
        return Parsed::Error(431, "request header fields too large");
    }
    let Ok(head) = std::str::from_utf8(&buf[..head_end]) else {
        return Parsed::Error(400, "the request is not text");
    };
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parsed::Error(400, "malformed request line");
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Parsed::Error(400, "unsupported HTTP version");
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) || !target.starts_with('/') {
        return Parsed::Error(400, "malformed request line");
    }
    let mut authorization = None;
    let mut content_length = 0usize;
    for (n, header) in lines.enumerate() {
        if n >= MAX_HEADERS {
            return Parsed::Error(431, "too many header fields");
        }
        let Some((name, value)) = header.split_once(':') else {
            return Parsed::Error(400, "malformed header field");
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "authorization" => authorization = Some(value.to_string()),
            "content-length" => match value.parse::<usize>() {
                Ok(n) => content_length = n,
                Err(_) => return Parsed::Error(400, "malformed content-length"),
            },
            "transfer-encoding" => return Parsed::Error(400, "chunked bodies are not accepted"),
            _ => {}
        }
    }
    if content_length > MAX_BODY {
        return Parsed::Error(413, "request body too large");
    }
    // Wait for the whole (small) body, so that no unread data makes the
    // close after the answer a reset.
    if buf.len() < head_end + 4 + content_length {
        return Parsed::Incomplete;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect();
    Parsed::Request(Request {
        method: method.to_string(),
        path: path.to_string(),
        query,
        authorization,
    })
}

/// A complete response with a JSON body; the connection closes after it.
pub fn response(status: u16, body: &str, extra_headers: &[(&str, &str)]) -> Vec<u8> {
    typed_response(status, "application/json", body, extra_headers)
}

/// A complete response with a body of `content_type` (ended by a newline).
pub fn typed_response(status: u16, content_type: &str, body: &str, extra_headers: &[(&str, &str)]) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len() + 1
    );
    for (k, v) in extra_headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.push('\n');
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request() {
        let Parsed::Request(r) = parse(
            b"POST /workers?count=3 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0k\r\nContent-Length: 0\r\n\r\n",
        ) else {
            panic!()
        };
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/workers"));
        assert_eq!(r.query, [("count".to_string(), "3".to_string())]);
        assert_eq!(r.authorization.as_deref(), Some("Bearer t0k"));
    }

    #[test]
    fn waits_for_the_rest() {
        assert_eq!(parse(b"GET /stats HTTP/1.1\r\nHost"), Parsed::Incomplete);
        assert_eq!(
            parse(b"POST /stop HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"),
            Parsed::Incomplete
        );
    }

    #[test]
    fn rejects_what_is_hostile_or_broken() {
        assert_eq!(
            parse(b"\x00\x01garbage\r\n\r\n"),
            Parsed::Error(400, "malformed request line")
        );
        assert_eq!(
            parse(b"GET /stats\r\n\r\n"),
            Parsed::Error(400, "malformed request line")
        );
        assert_eq!(
            parse(b"GET /stats HTTP/2\r\n\r\n"),
            Parsed::Error(400, "unsupported HTTP version")
        );
        assert_eq!(
            parse(b"GET /x HTTP/1.1\r\nnocolon\r\n\r\n"),
            Parsed::Error(400, "malformed header field")
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(
            parse(big.as_bytes()),
            Parsed::Error(431, "request header fields too large")
        );
        assert_eq!(
            parse(b"POST /stop HTTP/1.1\r\nContent-Length: 99999\r\n\r\n"),
            Parsed::Error(413, "request body too large")
        );
        assert_eq!(
            parse(b"POST /stop HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parsed::Error(400, "chunked bodies are not accepted")
        );
    }

    #[test]
    fn responses_close() {
        let r = String::from_utf8(response(404, "{}", &[])).unwrap();
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\n{}\n"));
    }
}
