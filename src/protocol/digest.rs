//! How a SHA-256 is written: lowercase hex in messages (`InputFile::sha256`,
//! `job_output_file.sha256`), and the `Content-Digest` header of RFC 9530
//! (`sha-256=:<base64>:`) on an upload, so the store can check what it received.
//! Pure text conversions; hashing itself is the caller's.
//!
//! Must not import anything outside `protocol`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The header an upload carries its checksum in (RFC 9530).
pub const CONTENT_DIGEST: &str = "content-digest";

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

/// The bytes of a hex string (either case); `None` if it is not hex.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// `sha-256=:<base64>:` for a SHA-256 given as hex; `None` if it is not 64 hex digits.
pub fn content_digest(sha256_hex: &str) -> Option<String> {
    let bytes = from_hex(sha256_hex).filter(|bytes| bytes.len() == 32)?;
    Some(format!("sha-256=:{}:", STANDARD.encode(bytes)))
}

/// The SHA-256 (lowercase hex) a `Content-Digest` value names, if it names one: the
/// header is a list of `algorithm=:base64:` members; other algorithms are skipped.
pub fn parse_content_digest(value: &str) -> Option<String> {
    value.split(',').find_map(|member| {
        let (algorithm, encoded) = member.trim().split_once('=')?;
        if !algorithm.trim().eq_ignore_ascii_case("sha-256") {
            return None;
        }
        let inner = encoded.trim().strip_prefix(':')?.strip_suffix(':')?;
        let bytes = STANDARD.decode(inner).ok().filter(|b| b.len() == 32)?;
        Some(to_hex(&bytes))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // SHA-256 of "test".
    const TEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn the_header_round_trips_and_skips_other_algorithms() {
        let header = content_digest(TEST);
        assert_eq!(
            header.as_deref(),
            Some("sha-256=:n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=:")
        );
        assert_eq!(
            header.as_deref().and_then(parse_content_digest).as_deref(),
            Some(TEST)
        );
        let listed = "sha-512=:AAAA:, sha-256=:n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=:";
        assert_eq!(parse_content_digest(listed).as_deref(), Some(TEST));
        for bad in ["", "sha-256=n4bQ", "sha-256=:AAAA:", "md5=:AAAA:"] {
            assert_eq!(parse_content_digest(bad), None, "{bad:?}");
        }
        assert_eq!(content_digest("abc"), None);
    }

    #[test]
    fn hex_both_ways() {
        assert_eq!(to_hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(from_hex("00ABff"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(from_hex("0g"), None);
        assert_eq!(from_hex("abc"), None);
    }
}
