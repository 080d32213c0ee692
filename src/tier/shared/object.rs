//! The shared tier's objects: their keys, and their bytes: a block file (`blockfmt`: format
//! version, source, key, ETag, block size, index, length, crc32c of header and data), then,
//! when signing, `S3CFSMAC` and an HMAC-SHA256 tag over everything before it.

use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::blockfmt;
use crate::object::BlockRef;

/// The tag that ends a signed block object: this magic, then HMAC-SHA256 over everything before it.
pub(super) const MAC_MAGIC: &[u8; 8] = b"S3CFSMAC";
const MAC_LEN: usize = 32;
pub(super) const TRAILER_LEN: usize = MAC_MAGIC.len() + MAC_LEN;

/// `<prefix>s3cachefs/v1/blocks/<object hash>/<index>`: the hash covers the source, key, ETag and
/// block size, so a changed object never matches old blocks.
pub(super) fn block_key(prefix: &str, block: &BlockRef) -> String {
    key(prefix, "blocks", block)
}

/// `<prefix>s3cachefs/v1/leases/<object hash>/<index>`: the lease of one block.
pub(super) fn lease_key(prefix: &str, block: &BlockRef) -> String {
    key(prefix, "leases", block)
}

fn key(prefix: &str, kind: &str, block: &BlockRef) -> String {
    let id = &block.id;
    let (hash, _) = blockfmt::object_hash(&id.source, &id.key, &id.etag, id.block_size);
    format!("{prefix}s3cachefs/v1/{kind}/{hash}/{}", id.index)
}

/// Checks a shared object against the block it must be; returns the data. With a `key`, only
/// an object with a valid tag passes; without one, the tag of a signed object is not checked.
pub(super) fn verify(key: Option<&[u8]>, body: Bytes, block: &BlockRef) -> Result<Bytes, String> {
    let file_len = blockfmt::file_len(&block.id, block.len()) as usize;
    let file = match key {
        Some(key) => {
            if body.len() != file_len + TRAILER_LEN || &body[file_len..file_len + MAC_MAGIC.len()] != MAC_MAGIC {
                return Err("no authentication tag".into());
            }
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(&body[..file_len]);
            mac.verify_slice(&body[file_len + MAC_MAGIC.len()..])
                .map_err(|_| "authentication tag does not match".to_string())?;
            body.slice(..file_len)
        }
        None if body.len() == file_len + TRAILER_LEN => body.slice(..file_len),
        None => body,
    };
    blockfmt::decode(file, &block.id, block.len()).map_err(|e| e.to_string())
}

/// The object to store for a block: the block file, then the tag when signing with `key`.
pub(super) fn encode(key: Option<&[u8]>, block: &BlockRef, data: &Bytes) -> Option<Bytes> {
    let header = blockfmt::encode_header(&block.id, data).ok()?;
    let mut out = BytesMut::with_capacity(header.len() + data.len() + TRAILER_LEN);
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    if let Some(key) = key {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(&out);
        let tag = mac.finalize().into_bytes();
        out.extend_from_slice(MAC_MAGIC);
        out.extend_from_slice(&tag);
    }
    Some(out.freeze())
}
