//! Bucket listing: the paging engine (prefix, delimiter roll-up into CommonPrefixes, max-keys, resume markers),
//! the opaque continuation-token format, and the ListObjectsV2 / ListObjects (V1) XML documents.

use std::ops::Bound;

use crate::handler::Query;
use crate::store::{Bucket, Object};
use crate::xml::{S3_NS, XML_DECL, elem, hex_decode, iso8601, url_encode};

/// Where a page starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Marker {
    /// Skip keys `<=` this string.
    After(String),
    /// Skip keys `<=` this string and every key starting with it (it was returned as a common prefix).
    AfterPrefix(String),
}

impl Marker {
    fn as_str(&self) -> &str {
        match self {
            Marker::After(s) | Marker::AfterPrefix(s) => s,
        }
    }

    /// Opaque continuation token: hex of a kind byte and the key or prefix.
    pub(crate) fn to_token(&self) -> String {
        let (kind, s) = match self {
            Marker::After(s) => ('k', s),
            Marker::AfterPrefix(s) => ('p', s),
        };
        let mut out = String::with_capacity(2 + 2 * s.len());
        out.push_str(&crate::store::hex(&[kind as u8]));
        out.push_str(&crate::store::hex(s.as_bytes()));
        out
    }

    pub(crate) fn from_token(token: &str) -> Option<Marker> {
        let raw = String::from_utf8(hex_decode(token)?).ok()?;
        let mut chars = raw.chars();
        let kind = chars.next()?;
        let rest = chars.as_str().to_owned();
        match kind {
            'k' => Some(Marker::After(rest)),
            'p' => Some(Marker::AfterPrefix(rest)),
            _ => None,
        }
    }
}

/// One page of a listing.
#[derive(Debug, Default)]
pub(crate) struct Page {
    pub(crate) contents: Vec<(String, Object)>,
    pub(crate) prefixes: Vec<String>,
    pub(crate) truncated: bool,
    /// Marker of the last returned entry (resume point) when truncated.
    pub(crate) next: Option<Marker>,
}

/// Lists up to `max_keys` entries (keys plus common prefixes) of `bucket` after `marker`.
pub(crate) fn list_page(
    bucket: &Bucket,
    prefix: &str,
    delimiter: Option<&str>,
    max_keys: usize,
    marker: Option<&Marker>,
) -> Page {
    let mut page = Page::default();
    if max_keys == 0 {
        return page;
    }
    let delimiter = delimiter.filter(|d| !d.is_empty());
    let start: Bound<String> = match marker {
        Some(m) if m.as_str() >= prefix => Bound::Excluded(m.as_str().to_owned()),
        _ => Bound::Included(prefix.to_owned()),
    };
    let skip_prefix = match marker {
        Some(Marker::AfterPrefix(p)) => Some(p.as_str()),
        _ => None,
    };
    let mut iter = bucket.range::<String, _>((start, Bound::Unbounded));
    let mut count = 0usize;
    let mut last: Option<Marker> = None;
    while let Some((key, obj)) = iter.next() {
        if !key.starts_with(prefix) {
            break;
        }
        if skip_prefix.is_some_and(|p| key.starts_with(p)) {
            continue;
        }
        let common = delimiter.and_then(|d| {
            key[prefix.len()..]
                .find(d)
                .map(|i| key[..prefix.len() + i + d.len()].to_owned())
        });
        if count == max_keys {
            page.truncated = true;
            break;
        }
        count += 1;
        match common {
            Some(cp) => {
                // Skip every other key under this common prefix. When the prefix ends in an ASCII byte below
                // 0x7f, jump straight past it: incrementing that byte gives the least string above all of them.
                if let Some(&b) = cp.as_bytes().last()
                    && b < 0x7f
                {
                    let mut upper = cp[..cp.len() - 1].to_owned();
                    upper.push((b + 1) as char);
                    iter = bucket.range::<String, _>((Bound::Included(upper), Bound::Unbounded));
                } else {
                    while let Some((k, _)) = iter.clone().next() {
                        if !k.starts_with(&cp) {
                            break;
                        }
                        iter.next();
                    }
                }
                page.prefixes.push(cp.clone());
                last = Some(Marker::AfterPrefix(cp));
            }
            None => {
                page.contents.push((key.clone(), obj.clone()));
                last = Some(Marker::After(key.clone()));
            }
        }
    }
    if page.truncated {
        page.next = last;
    }
    page
}

/// Error from parsing list parameters: (S3 code, message).
pub(crate) type ListError = (&'static str, String);

struct Params<'a> {
    prefix: &'a str,
    delimiter: Option<&'a str>,
    max_keys: usize,
    url: bool,
}

fn common_params(q: &Query) -> Result<Params<'_>, ListError> {
    let max_keys = match q.get("max-keys") {
        None => 1000,
        Some(s) => match s.trim().parse::<i64>() {
            Ok(n) if n >= 0 => n.min(1000) as usize,
            _ => {
                return Err((
                    "InvalidArgument",
                    "Provided max-keys not an integer or within integer range".into(),
                ));
            }
        },
    };
    let url = match q.get("encoding-type") {
        None => false,
        Some(e) if e.eq_ignore_ascii_case("url") => true,
        Some(_) => return Err(("InvalidArgument", "Invalid Encoding Method specified in Request".into())),
    };
    Ok(Params {
        prefix: q.get("prefix").unwrap_or(""),
        delimiter: q.get("delimiter").filter(|d| !d.is_empty()),
        max_keys,
        url,
    })
}

fn enc(url: bool, s: &str) -> String {
    if url { url_encode(s) } else { s.to_owned() }
}

fn write_entries(out: &mut String, page: &Page, url: bool, v1: bool) {
    for (key, obj) in &page.contents {
        out.push_str("<Contents>");
        elem(out, "Key", &enc(url, key));
        elem(out, "LastModified", &iso8601(obj.last_modified));
        elem(out, "ETag", &obj.etag);
        elem(out, "Size", &obj.data.len().to_string());
        if v1 {
            out.push_str("<Owner><ID>testserver</ID><DisplayName>testserver</DisplayName></Owner>");
        }
        elem(out, "StorageClass", "STANDARD");
        out.push_str("</Contents>");
    }
    for p in &page.prefixes {
        out.push_str("<CommonPrefixes>");
        elem(out, "Prefix", &enc(url, p));
        out.push_str("</CommonPrefixes>");
    }
}

/// ListObjectsV2 response document.
pub(crate) fn list_v2(name: &str, bucket: &Bucket, q: &Query) -> Result<String, ListError> {
    let p = common_params(q)?;
    let token = q.get("continuation-token");
    let start_after = q.get("start-after").filter(|s| !s.is_empty());
    let marker = match token {
        Some(t) => Some(Marker::from_token(t).ok_or((
            "InvalidArgument",
            "The continuation token provided is incorrect".to_owned(),
        ))?),
        None => start_after.map(|s| Marker::After(s.to_owned())),
    };
    let page = list_page(bucket, p.prefix, p.delimiter, p.max_keys, marker.as_ref());

    let mut out = String::from(XML_DECL);
    out.push_str("<ListBucketResult xmlns=\"");
    out.push_str(S3_NS);
    out.push_str("\">");
    elem(&mut out, "Name", name);
    elem(&mut out, "Prefix", &enc(p.url, p.prefix));
    if let Some(d) = p.delimiter {
        elem(&mut out, "Delimiter", &enc(p.url, d));
    }
    elem(&mut out, "MaxKeys", &p.max_keys.to_string());
    elem(
        &mut out,
        "KeyCount",
        &(page.contents.len() + page.prefixes.len()).to_string(),
    );
    elem(&mut out, "IsTruncated", if page.truncated { "true" } else { "false" });
    if p.url {
        elem(&mut out, "EncodingType", "url");
    }
    if let Some(t) = token {
        elem(&mut out, "ContinuationToken", t);
    }
    if let Some(next) = &page.next {
        elem(&mut out, "NextContinuationToken", &next.to_token());
    }
    if let Some(s) = start_after {
        elem(&mut out, "StartAfter", &enc(p.url, s));
    }
    write_entries(&mut out, &page, p.url, false);
    out.push_str("</ListBucketResult>");
    Ok(out)
}

/// ListObjects (V1) response document.
pub(crate) fn list_v1(name: &str, bucket: &Bucket, q: &Query) -> Result<String, ListError> {
    let p = common_params(q)?;
    let marker_str = q.get("marker").unwrap_or("");
    let marker = if marker_str.is_empty() {
        None
    } else {
        // A marker that is itself a common prefix (a NextMarker we returned) skips everything under it.
        let is_common_prefix = p.delimiter.is_some_and(|d| {
            marker_str.starts_with(p.prefix)
                && marker_str[p.prefix.len()..]
                    .find(d)
                    .map(|i| p.prefix.len() + i + d.len())
                    == Some(marker_str.len())
        });
        Some(if is_common_prefix {
            Marker::AfterPrefix(marker_str.to_owned())
        } else {
            Marker::After(marker_str.to_owned())
        })
    };
    let page = list_page(bucket, p.prefix, p.delimiter, p.max_keys, marker.as_ref());

    let mut out = String::from(XML_DECL);
    out.push_str("<ListBucketResult xmlns=\"");
    out.push_str(S3_NS);
    out.push_str("\">");
    elem(&mut out, "Name", name);
    elem(&mut out, "Prefix", &enc(p.url, p.prefix));
    elem(&mut out, "Marker", &enc(p.url, marker_str));
    elem(&mut out, "MaxKeys", &p.max_keys.to_string());
    if let Some(d) = p.delimiter {
        elem(&mut out, "Delimiter", &enc(p.url, d));
    }
    elem(&mut out, "IsTruncated", if page.truncated { "true" } else { "false" });
    if let Some(next) = &page.next {
        elem(&mut out, "NextMarker", &enc(p.url, next.as_str()));
    }
    if p.url {
        elem(&mut out, "EncodingType", "url");
    }
    write_entries(&mut out, &page, p.url, true);
    out.push_str("</ListBucketResult>");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::SystemTime;

    fn bucket(keys: &[&str]) -> Bucket {
        keys.iter()
            .map(|k| (k.to_string(), Object::new(Bytes::from_static(b"x"), SystemTime::now())))
            .collect()
    }

    /// Pages through everything and returns (keys, prefixes) in order.
    fn all(b: &Bucket, prefix: &str, delim: Option<&str>, page_size: usize) -> (Vec<String>, Vec<String>) {
        let (mut keys, mut prefixes) = (Vec::new(), Vec::new());
        let mut marker = None;
        loop {
            let page = list_page(b, prefix, delim, page_size, marker.as_ref());
            assert!(page.contents.len() + page.prefixes.len() <= page_size);
            keys.extend(page.contents.into_iter().map(|(k, _)| k));
            prefixes.extend(page.prefixes);
            if !page.truncated {
                break;
            }
            let token = page.next.unwrap().to_token();
            marker = Some(Marker::from_token(&token).unwrap());
        }
        (keys, prefixes)
    }

    #[test]
    fn paging_with_delimiter_every_page_size() {
        let b = bucket(&[
            "a",
            "b/",
            "b/1",
            "b/2",
            "b/c/3",
            "c",
            "d/x",
            "d/y",
            "e",
            "f\u{e9}/1",
            "f\u{e9}/2",
            "g",
            "h/",
            "z",
        ]);
        for size in 1..=15 {
            let (keys, prefixes) = all(&b, "", Some("/"), size);
            assert_eq!(keys, ["a", "c", "e", "g", "z"], "size {size}");
            assert_eq!(prefixes, ["b/", "d/", "f\u{e9}/", "h/"], "size {size}");
            let (keys, prefixes) = all(&b, "b/", Some("/"), size);
            assert_eq!(keys, ["b/", "b/1", "b/2"]);
            assert_eq!(prefixes, ["b/c/"]);
            let (keys, prefixes) = all(&b, "", None, size);
            assert_eq!(keys.len(), 14);
            assert!(prefixes.is_empty());
        }
    }

    #[test]
    fn multi_char_delimiter_and_non_ascii_end() {
        let b = bucket(&["a::b", "a::c", "a:d", "x\u{e9}1", "x\u{e9}2", "y"]);
        let (keys, prefixes) = all(&b, "", Some("::"), 1);
        assert_eq!(keys, ["a:d", "x\u{e9}1", "x\u{e9}2", "y"]);
        assert_eq!(prefixes, ["a::"]);
        let (keys, prefixes) = all(&b, "", Some("\u{e9}"), 1);
        assert_eq!(keys, ["a::b", "a::c", "a:d", "y"]);
        assert_eq!(prefixes, ["x\u{e9}"]);
    }

    #[test]
    fn token_round_trip() {
        for m in [Marker::After("a b/\u{1F600}".into()), Marker::AfterPrefix("".into())] {
            assert_eq!(Marker::from_token(&m.to_token()), Some(m));
        }
        assert_eq!(Marker::from_token("zz"), None);
    }
}
