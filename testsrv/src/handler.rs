//! HTTP request handling: path-style routing of S3 requests, accounting, latency and fault injection, and the
//! S3 operations themselves (ListObjects V1/V2, Head/Get/Put/DeleteObject, HeadBucket, GetBucketLocation,
//! Create/DeleteBucket, ListBuckets) with S3's headers, conditionals (conditional writes included), ranges and
//! error documents.

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;

use crate::body::{EndAction, ResponseBody};
use crate::chunked::decode_aws_chunked;
use crate::conn::ConnCtl;
use crate::faults::FaultKind;
use crate::list::{list_v1, list_v2};
use crate::state::Shared;
use crate::stats::{Op, RequestRecord};
use crate::store::{Object, md5_digest};
use crate::xml::{S3_NS, XML_DECL, base64, elem, error_document, iso8601};

/// Decoded query parameters, in request order.
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(q: &str) -> Self {
        let decode = |s: &str| {
            percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        Query(
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(p), String::new()),
                })
                .collect(),
        )
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    fn has_any(&self, names: &[&str]) -> bool {
        names.iter().any(|n| self.has(n))
    }
}

/// Bucket sub-resources this server does not implement (a GET with none of them is a listing).
const BUCKET_SUBRESOURCES: &[&str] = &[
    "acl",
    "policy",
    "policyStatus",
    "versioning",
    "uploads",
    "tagging",
    "cors",
    "lifecycle",
    "website",
    "logging",
    "notification",
    "replication",
    "encryption",
    "object-lock",
    "versions",
    "accelerate",
    "requestPayment",
    "ownershipControls",
    "publicAccessBlock",
    "intelligent-tiering",
    "inventory",
    "metrics",
    "analytics",
    "delete",
];

/// Object sub-resources / multipart parameters this server does not implement.
const OBJECT_SUBRESOURCES: &[&str] = &[
    "acl",
    "tagging",
    "attributes",
    "retention",
    "legal-hold",
    "torrent",
    "uploadId",
    "uploads",
    "partNumber",
    "restore",
    "select",
];

/// Decoded request target.
#[derive(Debug)]
struct Target {
    bucket: String,
    key: Option<String>,
    path: String,
}

fn parse_target(raw: &str) -> Target {
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    let rest = raw.strip_prefix('/').unwrap_or(raw);
    let (bucket, key) = match rest.split_once('/') {
        Some((b, k)) => (decode(b), (!k.is_empty()).then(|| decode(k))),
        None => (decode(rest), None),
    };
    let path = match &key {
        Some(k) => format!("/{bucket}/{k}"),
        None => format!("/{bucket}"),
    };
    Target { bucket, key, path }
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    ListBuckets,
    HeadBucket,
    GetBucketLocation,
    ListV2,
    ListV1,
    CreateBucket,
    DeleteBucket,
    HeadObject,
    GetObject,
    PutObject,
    DeleteObject,
    NotImplemented,
    MethodNotAllowed,
}

impl Route {
    fn of(method: &Method, t: &Target, q: &Query, headers: &HeaderMap) -> Route {
        if t.bucket.is_empty() {
            return if *method == Method::GET {
                Route::ListBuckets
            } else {
                Route::MethodNotAllowed
            };
        }
        match &t.key {
            None => match *method {
                Method::HEAD => Route::HeadBucket,
                Method::GET if q.has("location") => Route::GetBucketLocation,
                Method::GET if q.has_any(BUCKET_SUBRESOURCES) => Route::NotImplemented,
                Method::GET if q.get("list-type") == Some("2") => Route::ListV2,
                Method::GET => Route::ListV1,
                Method::PUT if q.has_any(BUCKET_SUBRESOURCES) => Route::NotImplemented,
                Method::PUT => Route::CreateBucket,
                Method::DELETE if q.has_any(BUCKET_SUBRESOURCES) => Route::NotImplemented,
                Method::DELETE => Route::DeleteBucket,
                Method::POST => Route::NotImplemented,
                _ => Route::MethodNotAllowed,
            },
            Some(_) => {
                let unsupported = q.has_any(OBJECT_SUBRESOURCES);
                match *method {
                    _ if unsupported => Route::NotImplemented,
                    Method::HEAD => Route::HeadObject,
                    Method::GET => Route::GetObject,
                    Method::PUT if headers.contains_key("x-amz-copy-source") => Route::NotImplemented,
                    Method::PUT => Route::PutObject,
                    Method::DELETE => Route::DeleteObject,
                    Method::POST => Route::NotImplemented,
                    _ => Route::MethodNotAllowed,
                }
            }
        }
    }

    fn op(self) -> Op {
        match self {
            Route::HeadBucket => Op::HeadBucket,
            Route::ListV2 | Route::ListV1 => Op::List,
            Route::HeadObject => Op::Head,
            Route::GetObject => Op::Get,
            Route::PutObject => Op::Put,
            Route::DeleteObject => Op::Delete,
            _ => Op::Other,
        }
    }
}

/// A response before body shaping.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn new(status: StatusCode) -> Self {
        Reply {
            status,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    fn header(mut self, name: impl Into<HeaderName>, value: impl AsRef<str>) -> Self {
        if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
            self.headers.insert(name.into(), v);
        }
        self
    }

    fn xml(status: StatusCode, doc: String) -> Self {
        let mut r = Reply::new(status).header(header::CONTENT_TYPE, "application/xml");
        r.body = Bytes::from(doc);
        r
    }
}

/// Per-request context for error documents.
struct Ctx {
    request_id: String,
    resource: String,
}

impl Ctx {
    fn error(&self, status: StatusCode, code: &str, message: &str) -> Reply {
        Reply::xml(status, error_document(code, message, &self.resource, &self.request_id))
    }
}

/// Serves one request.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnCtl>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, io::Error> {
    let (parts, body) = req.into_parts();
    let method = parts.method;
    let headers = parts.headers;
    let query_str = parts.uri.query().unwrap_or("").to_owned();
    let query = Query::parse(&query_str);
    let target = parse_target(parts.uri.path());
    let route = Route::of(&method, &target, &query, &headers);
    let op = route.op();
    let header_str = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let access_key = header_str(&header::AUTHORIZATION).and_then(|a| access_key_of(&a));
    if method == Method::POST && target.bucket.is_empty() {
        let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
        return Ok(sts(&shared, access_key.as_deref(), &body));
    }

    let seq = shared.next_seq();
    let ctx = Ctx {
        request_id: format!("{seq:016X}"),
        resource: target.path.clone(),
    };
    let record = shared.stats().register(RequestRecord {
        seq,
        op,
        method: method.as_str().to_owned(),
        path: target.path.clone(),
        bucket: target.bucket.clone(),
        key: target.key.clone(),
        query: query_str,
        range: header_str(&header::RANGE),
        if_match: header_str(&header::IF_MATCH),
        if_none_match: header_str(&header::IF_NONE_MATCH),
        status: 0,
        fault: None,
    });

    // Read the whole request body up front, so that early answers never leave unread bytes on the connection.
    let body = body.collect().await.map_err(io::Error::other)?.to_bytes();

    let settings = shared.settings();
    let latency = shared.bucket_latency(&target.bucket).unwrap_or(settings.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let fault = shared.roll_fault(op, &target.bucket, target.key.as_deref());
    if let Some(f) = &fault {
        shared.stats().set_fault(record, f.clone());
    }
    let reply = match &fault {
        Some(FaultKind::Status500) => ctx.error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
        Some(FaultKind::SlowDown) => ctx.error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SlowDown",
            "Please reduce your request rate.",
        ),
        Some(FaultKind::ConditionalConflict) => ctx.error(
            StatusCode::CONFLICT,
            "ConditionalRequestConflict",
            "A conflicting operation occurred. If using PutObject you can retry the request.",
        ),
        other => {
            if let Some(FaultKind::Stall(d)) = other {
                tokio::time::sleep(*d).await;
            }
            process(
                &shared,
                route,
                &target,
                &query,
                &headers,
                body,
                &ctx,
                access_key.as_deref(),
            )
        }
    };

    let is_head = method == Method::HEAD;
    let status = reply.status;
    let mut rb = if is_head {
        ResponseBody::empty()
    } else {
        ResponseBody::full(reply.body)
    };
    if op == Op::Get && status.is_success() {
        rb = rb.counting_get_bytes(shared.clone(), record);
    }
    let rate = match &fault {
        Some(FaultKind::Trickle { bytes_per_sec }) => Some((*bytes_per_sec).max(1)),
        _ => settings.bandwidth,
    };
    if let Some(r) = rate {
        rb = rb.with_rate(r);
    }
    let end = match &fault {
        Some(FaultKind::ResetMidBody) => Some(EndAction::Reset),
        Some(FaultKind::ShortBody) => Some(EndAction::Short),
        _ => None,
    };
    if let Some(end) = end {
        if rb.len() == 0 {
            // Nothing to cut short: drop the connection before any response.
            if end == EndAction::Reset {
                conn.request_reset();
            }
            return Err(io::Error::other(
                "injected fault: connection dropped before the response",
            ));
        }
        rb = rb.truncated(end, conn);
    }

    shared.stats().set_status(record, status.as_u16());
    let mut response = Response::new(rb);
    *response.status_mut() = status;
    let h = response.headers_mut();
    *h = reply.headers;
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        h.insert("x-amz-request-id", v.clone());
        h.insert("x-amz-id-2", v);
    }
    h.insert(header::SERVER, HeaderValue::from_static("s3cachefs-testserver"));
    Ok(response)
}

#[allow(clippy::too_many_arguments)]
fn process(
    shared: &Shared,
    route: Route,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
    body: Bytes,
    ctx: &Ctx,
    access_key: Option<&str>,
) -> Reply {
    let bucket = t.bucket.as_str();
    if !bucket.is_empty() && shared.store().is_denied(bucket) {
        return ctx.error(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied");
    }
    if let Some(ak) = access_key {
        let list_prefix = matches!(route, Route::ListV1 | Route::ListV2).then(|| q.get("prefix").unwrap_or(""));
        if !shared.iam().allows(ak, bucket, t.key.as_deref(), list_prefix) {
            return ctx.error(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied");
        }
    }
    let no_such_bucket = || {
        ctx.error(
            StatusCode::NOT_FOUND,
            "NoSuchBucket",
            "The specified bucket does not exist",
        )
    };
    let key = t.key.as_deref().unwrap_or("");
    match route {
        Route::ListBuckets => list_buckets(shared),
        Route::HeadBucket => {
            if shared.store().bucket(bucket).is_some() {
                Reply::new(StatusCode::OK).header(HeaderName::from_static("x-amz-bucket-region"), "us-east-1")
            } else {
                Reply::new(StatusCode::NOT_FOUND)
            }
        }
        Route::GetBucketLocation => {
            if shared.store().bucket(bucket).is_none() {
                return no_such_bucket();
            }
            Reply::xml(
                StatusCode::OK,
                format!("{XML_DECL}<LocationConstraint xmlns=\"{S3_NS}\"></LocationConstraint>"),
            )
        }
        Route::ListV2 | Route::ListV1 => {
            let store = shared.store();
            let Some(b) = store.bucket(bucket) else {
                return no_such_bucket();
            };
            let doc = if route == Route::ListV2 {
                list_v2(bucket, b, q)
            } else {
                list_v1(bucket, b, q)
            };
            match doc {
                Ok(doc) => Reply::xml(StatusCode::OK, doc),
                Err((code, msg)) => ctx.error(StatusCode::BAD_REQUEST, code, &msg),
            }
        }
        Route::CreateBucket => {
            shared.store_mut().create_bucket(bucket);
            Reply::new(StatusCode::OK).header(header::LOCATION, format!("/{bucket}"))
        }
        Route::DeleteBucket => match shared.store_mut().delete_bucket(bucket) {
            Ok(true) => Reply::new(StatusCode::NO_CONTENT),
            Ok(false) => no_such_bucket(),
            Err(()) => ctx.error(
                StatusCode::CONFLICT,
                "BucketNotEmpty",
                "The bucket you tried to delete is not empty",
            ),
        },
        Route::HeadObject | Route::GetObject => {
            let obj = {
                let store = shared.store();
                let Some(b) = store.bucket(bucket) else {
                    return no_such_bucket();
                };
                b.get(key).cloned()
            };
            match obj {
                Some(obj) => get_object(&obj, headers, ctx),
                None => ctx.error(StatusCode::NOT_FOUND, "NoSuchKey", "The specified key does not exist."),
            }
        }
        Route::PutObject => put_object(shared, bucket, key, headers, body, ctx),
        Route::DeleteObject => {
            let mut store = shared.store_mut();
            if store.bucket(bucket).is_none() {
                return no_such_bucket();
            }
            store.delete(bucket, key);
            Reply::new(StatusCode::NO_CONTENT)
        }
        Route::NotImplemented => ctx.error(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            "A header or query you provided implies functionality that is not implemented",
        ),
        Route::MethodNotAllowed => ctx.error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The specified method is not allowed against this resource.",
        ),
    }
}

/// The access key id of a SigV4 `Authorization` header (`... Credential=AKID/date/region/service/aws4_request, ...`).
fn access_key_of(authorization: &str) -> Option<String> {
    let rest = authorization.split("Credential=").nth(1)?;
    let key = rest.split('/').next()?.trim();
    (!key.is_empty()).then(|| key.to_owned())
}

/// STS on the same endpoint (as S3-compatible stores that have it): `GetCallerIdentity` only, answered with the
/// access key's ARN (form-encoded body, `awsQuery` XML answer). Not counted in the stats.
fn sts(shared: &Shared, access_key: Option<&str>, body: &[u8]) -> Response<ResponseBody> {
    const STS_NS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";
    let form = Query::parse(&String::from_utf8_lossy(body));
    let iam = shared.iam();
    let (status, doc) = match (form.get("Action"), access_key) {
        (Some("GetCallerIdentity"), Some(ak)) if iam.sts => {
            let arn = iam.arn(ak);
            let account = arn.split(':').nth(4).unwrap_or("000000000000").to_owned();
            let mut out = format!("<GetCallerIdentityResponse xmlns=\"{STS_NS}\"><GetCallerIdentityResult>");
            elem(&mut out, "Arn", &arn);
            elem(&mut out, "UserId", ak);
            elem(&mut out, "Account", &account);
            out.push_str("</GetCallerIdentityResult><ResponseMetadata><RequestId>sts</RequestId></ResponseMetadata>");
            out.push_str("</GetCallerIdentityResponse>");
            (StatusCode::OK, out)
        }
        (_, None) if iam.sts => (
            StatusCode::FORBIDDEN,
            format!(
                "<ErrorResponse xmlns=\"{STS_NS}\"><Error><Type>Sender</Type><Code>MissingAuthenticationToken</Code>\
                 <Message>Request is missing Authentication Token</Message></Error><RequestId>sts</RequestId></ErrorResponse>"
            ),
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            format!(
                "<ErrorResponse xmlns=\"{STS_NS}\"><Error><Type>Sender</Type><Code>InvalidAction</Code>\
                 <Message>Could not find operation</Message></Error><RequestId>sts</RequestId></ErrorResponse>"
            ),
        ),
    };
    let mut response = Response::new(ResponseBody::full(Bytes::from(doc)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    response
}

fn list_buckets(shared: &Shared) -> Reply {
    let mut out = String::from(XML_DECL);
    out.push_str("<ListAllMyBucketsResult xmlns=\"");
    out.push_str(S3_NS);
    out.push_str("\"><Owner><ID>testserver</ID><DisplayName>testserver</DisplayName></Owner><Buckets>");
    let created = iso8601(SystemTime::now());
    for name in shared.store().bucket_names() {
        out.push_str("<Bucket>");
        elem(&mut out, "Name", &name);
        elem(&mut out, "CreationDate", &created);
        out.push_str("</Bucket>");
    }
    out.push_str("</Buckets></ListAllMyBucketsResult>");
    Reply::xml(StatusCode::OK, out)
}

/// Whether an `If-Match` / `If-None-Match` list matches the (quoted) ETag; quotes and `W/` are optional.
fn etag_matches(list: &str, etag: &str) -> bool {
    let bare = etag.trim_matches('"');
    list.split(',').map(str::trim).any(|c| {
        let c = c.strip_prefix("W/").unwrap_or(c);
        c == "*" || c.trim_matches('"') == bare
    })
}

#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    /// Not a (single, well-formed) byte range: serve the whole object, like S3.
    Ignore,
    Unsatisfiable,
    /// Inclusive byte positions.
    Bytes(u64, u64),
}

fn parse_range(value: &str, size: u64) -> RangeSpec {
    let v = value.trim();
    let Some(spec) = v
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case("bytes="))
        .map(|_| v[6..].trim())
    else {
        return RangeSpec::Ignore;
    };
    if spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return RangeSpec::Ignore;
        };
        if n == 0 || size == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Bytes(size.saturating_sub(n), size - 1);
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeSpec::Ignore;
    };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e,
            _ => return RangeSpec::Ignore,
        }
    };
    if start >= size {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Bytes(start, end.min(size - 1))
}

fn get_object(obj: &Object, headers: &HeaderMap, ctx: &Ctx) -> Reply {
    let h = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let http_date = |name: HeaderName| h(name).and_then(|v| httpdate::parse_http_date(v).ok());
    let last_modified = httpdate::fmt_http_date(obj.last_modified);
    let precondition_failed = || {
        ctx.error(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold",
        )
    };
    if let Some(im) = h(header::IF_MATCH) {
        if !etag_matches(im, &obj.etag) {
            return precondition_failed();
        }
    } else if http_date(header::IF_UNMODIFIED_SINCE).is_some_and(|t| obj.last_modified > t) {
        return precondition_failed();
    }
    let not_modified = match h(header::IF_NONE_MATCH) {
        Some(inm) => etag_matches(inm, &obj.etag),
        None => http_date(header::IF_MODIFIED_SINCE).is_some_and(|t| obj.last_modified <= t),
    };
    if not_modified {
        return Reply::new(StatusCode::NOT_MODIFIED)
            .header(header::ETAG, &obj.etag)
            .header(header::LAST_MODIFIED, &last_modified);
    }

    let size = obj.data.len() as u64;
    let spec = h(header::RANGE).map_or(RangeSpec::Ignore, |r| parse_range(r, size));
    let (status, data, content_range) = match spec {
        RangeSpec::Ignore => (StatusCode::OK, obj.data.clone(), None),
        RangeSpec::Unsatisfiable => {
            return ctx
                .error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "InvalidRange",
                    "The requested range is not satisfiable",
                )
                .header(header::CONTENT_RANGE, format!("bytes */{size}"));
        }
        RangeSpec::Bytes(a, b) => (
            StatusCode::PARTIAL_CONTENT,
            obj.data.slice(a as usize..=b as usize),
            Some(format!("bytes {a}-{b}/{size}")),
        ),
    };
    let mut r = Reply::new(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, data.len().to_string())
        .header(header::ETAG, &obj.etag)
        .header(header::LAST_MODIFIED, &last_modified)
        .header(header::ACCEPT_RANGES, "bytes");
    if let Some(cr) = content_range {
        r = r.header(header::CONTENT_RANGE, cr);
    }
    r.body = data;
    r
}

fn put_object(shared: &Shared, bucket: &str, key: &str, headers: &HeaderMap, body: Bytes, ctx: &Ctx) -> Reply {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let streaming = h("content-encoding").is_some_and(|v| v.contains("aws-chunked"))
        || h("x-amz-content-sha256").is_some_and(|v| v.starts_with("STREAMING-"));
    let data = if streaming {
        match decode_aws_chunked(&body) {
            Ok(d) => d,
            Err(e) => {
                return ctx.error(
                    StatusCode::BAD_REQUEST,
                    "IncompleteBody",
                    &format!("bad aws-chunked body: {e}"),
                );
            }
        }
    } else {
        body
    };
    if let Some(declared) = h("x-amz-decoded-content-length").and_then(|v| v.trim().parse::<usize>().ok())
        && declared != data.len()
    {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "IncompleteBody",
            "You did not provide the number of bytes specified by the Content-Length HTTP header",
        );
    }
    let digest = md5_digest(&data);
    // The conditions are checked and the object stored under one write lock: of concurrent conditional writes of
    // a key, exactly one succeeds.
    let mut store = shared.store_mut();
    if store.bucket(bucket).is_none() {
        return ctx.error(
            StatusCode::NOT_FOUND,
            "NoSuchBucket",
            "The specified bucket does not exist",
        );
    }
    if let Some(md5) = h("content-md5")
        && md5.trim() != base64(&digest)
    {
        return ctx.error(
            StatusCode::BAD_REQUEST,
            "BadDigest",
            "The Content-MD5 you specified did not match what we received.",
        );
    }
    if let Some(refused) = put_preconditions(store.get(bucket, key), h("if-none-match"), h("if-match"), ctx) {
        return refused;
    }
    let etag = store.put(bucket, key, Object::with_md5(data, digest, SystemTime::now()));
    Reply::new(StatusCode::OK).header(header::ETAG, etag)
}

/// S3's conditional writes: `If-None-Match: *` succeeds only when no object has the key (else 412), and
/// `If-Match: <etag>` only when the object has that ETag (412 when it differs, 404 NoSuchKey when there is no
/// object). `If-None-Match` with anything but `*` is not supported by S3 either. `None` lets the write proceed.
fn put_preconditions(
    current: Option<&Object>,
    if_none_match: Option<&str>,
    if_match: Option<&str>,
    ctx: &Ctx,
) -> Option<Reply> {
    let precondition_failed = || {
        ctx.error(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold",
        )
    };
    if let Some(inm) = if_none_match {
        if inm.trim() != "*" {
            return Some(ctx.error(
                StatusCode::NOT_IMPLEMENTED,
                "NotImplemented",
                "A header you provided implies functionality that is not implemented",
            ));
        }
        if current.is_some() {
            return Some(precondition_failed());
        }
    }
    if let Some(im) = if_match {
        match current {
            None => {
                return Some(ctx.error(StatusCode::NOT_FOUND, "NoSuchKey", "The specified key does not exist."));
            }
            Some(obj) if !etag_matches(im, &obj.etag) => return Some(precondition_failed()),
            Some(_) => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeSpec::*;
        assert_eq!(parse_range("bytes=0-9", 100), Bytes(0, 9));
        assert_eq!(parse_range("bytes=90-200", 100), Bytes(90, 99));
        assert_eq!(parse_range("bytes=10-", 100), Bytes(10, 99));
        assert_eq!(parse_range("bytes=-10", 100), Bytes(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), Bytes(0, 99));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 10), Ignore);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), Ignore);
        assert_eq!(parse_range("items=0-1", 10), Ignore);
    }

    #[test]
    fn targets_and_queries() {
        let t = parse_target("/b/dir/a%20b%2Bc%25");
        assert_eq!((t.bucket.as_str(), t.key.as_deref()), ("b", Some("dir/a b+c%")));
        let t = parse_target("/b/");
        assert_eq!((t.bucket.as_str(), t.key.as_deref()), ("b", None));
        let q = Query::parse("list-type=2&prefix=a%2Fb+c&delimiter=%2F&x");
        assert_eq!(q.get("prefix"), Some("a/b c"));
        assert_eq!(q.get("delimiter"), Some("/"));
        assert_eq!(q.get("x"), Some(""));
    }

    #[test]
    fn etags() {
        assert!(etag_matches("\"abc\"", "\"abc\""));
        assert!(etag_matches("abc", "\"abc\""));
        assert!(etag_matches("\"x\", \"abc\"", "\"abc\""));
        assert!(etag_matches("*", "\"abc\""));
        assert!(!etag_matches("\"abd\"", "\"abc\""));
    }
}
