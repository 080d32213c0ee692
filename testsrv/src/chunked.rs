//! Decoding of the `aws-chunked` content encoding that SigV4 streaming uploads use:
//! `hexlen[;chunk-signature=...]\r\n<data>\r\n ... 0[;...]\r\n[trailer: value\r\n]*\r\n`.

use bytes::{Bytes, BytesMut};

/// Decodes an aws-chunked body. Trailers (e.g. `x-amz-checksum-crc32`) are ignored.
pub(crate) fn decode_aws_chunked(body: &[u8]) -> Result<Bytes, String> {
    let mut out = BytesMut::with_capacity(body.len());
    let mut pos = 0usize;
    loop {
        let line_end = find_crlf(body, pos).ok_or("missing chunk header line terminator")?;
        let line = std::str::from_utf8(&body[pos..line_end]).map_err(|_| "chunk header is not UTF-8")?;
        let size_str = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16).map_err(|_| format!("bad chunk size {size_str:?}"))?;
        pos = line_end + 2;
        if size == 0 {
            // Trailers follow until an empty line (or the end of the body); their content is not needed.
            return Ok(out.freeze());
        }
        let end = pos
            .checked_add(size)
            .filter(|e| *e <= body.len())
            .ok_or("chunk exceeds body")?;
        out.extend_from_slice(&body[pos..end]);
        pos = end;
        if body.get(pos..pos + 2) != Some(b"\r\n") {
            return Err("chunk data not followed by CRLF".into());
        }
        pos += 2;
    }
}

fn find_crlf(b: &[u8], from: usize) -> Option<usize> {
    b.get(from..)?.windows(2).position(|w| w == b"\r\n").map(|i| from + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_and_trailer_forms() {
        let signed =
            b"5;chunk-signature=abc\r\nhello\r\n6;chunk-signature=def\r\n world\r\n0;chunk-signature=00\r\n\r\n";
        assert_eq!(&decode_aws_chunked(signed).unwrap()[..], b"hello world");
        let trailer = b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:NSRBwg==\r\n\r\n";
        assert_eq!(&decode_aws_chunked(trailer).unwrap()[..], b"abc");
        assert!(decode_aws_chunked(b"5\r\nab").is_err());
        assert!(decode_aws_chunked(b"zz\r\n").is_err());
    }
}
