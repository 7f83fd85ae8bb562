use std::{
    borrow::Cow,
    convert::TryFrom,
    fmt,
    iter::{IntoIterator, Iterator},
    str::FromStr,
};

use http::{
    header::{self, HeaderName, HeaderValue},
    uri::{self, Authority, Parts, PathAndQuery, Scheme, Uri},
    Extensions, HeaderMap, Method, StatusCode,
};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{
    ext::Protocol,
    proto::{coding::BufMutExt, frame::FrameType},
    qpack::{self, EncoderError, HeaderField},
};

#[derive(Debug)]
#[cfg_attr(test, derive(PartialEq, Clone))]
pub struct Header {
    pseudo: Pseudo,
    fields: HeaderMap,
}

#[allow(clippy::len_without_is_empty)]
impl Header {
    /// Creates a new `Header` frame data suitable for sending a request
    pub fn request(
        method: Method,
        uri: Uri,
        fields: HeaderMap,
        ext: Extensions,
    ) -> Result<Self, HeaderError> {
        match (uri.authority(), fields.get("host")) {
            (None, None) => Err(HeaderError::MissingAuthority),
            (Some(a), Some(h)) if a.as_str() != h => Err(HeaderError::ContradictedAuthority),
            _ => Ok(Self {
                pseudo: Pseudo::request(method, uri, ext),
                fields,
            }),
        }
    }

    pub fn response(status: StatusCode, fields: HeaderMap) -> Self {
        Self {
            pseudo: Pseudo::response(status),
            fields,
        }
    }

    pub fn trailer(fields: HeaderMap) -> Self {
        Self {
            //= https://www.rfc-editor.org/rfc/rfc9114#section-4.3
            //# Pseudo-header fields MUST NOT appear in trailer
            //# sections.
            pseudo: Pseudo::default(),
            fields,
        }
    }

    pub fn into_request_parts(
        self,
    ) -> Result<(Method, Uri, Option<Protocol>, HeaderMap), HeaderError> {
        // Tether patch (see vendor/README.md at the repository root): the URI is put
        // together from the parsed pseudo-headers as they are (`Uri::from_parts`), where
        // upstream's `uri::Builder` printed each back to bytes, copied and parsed it again.
        let mut uri = uri::Parts::default();
        uri.path_and_query = self.pseudo.path;
        uri.scheme = self.pseudo.scheme;

        //= https://www.rfc-editor.org/rfc/rfc9114#section-4.3.1
        //# If the :scheme pseudo-header field identifies a scheme that has a
        //# mandatory authority component (including "http" and "https"), the
        //# request MUST contain either an :authority pseudo-header field or a
        //# Host header field.

        //= https://www.rfc-editor.org/rfc/rfc9114#section-4.3.1
        //= type=TODO
        //# If the scheme does not have a mandatory authority component and none
        //# is provided in the request target, the request MUST NOT contain the
        //# :authority pseudo-header or Host header fields.
        let host = |h: &HeaderValue| {
            Authority::try_from(h.as_bytes())
                .map_err(|e| HeaderError::InvalidRequest(http::Error::from(e)))
        };
        uri.authority = match (self.pseudo.authority, self.fields.get("host")) {
            (None, None) => return Err(HeaderError::MissingAuthority),
            (Some(a), None) => Some(a),
            (None, Some(h)) => Some(host(h)?),
            //= https://www.rfc-editor.org/rfc/rfc9114#section-4.3.1
            //# If both fields are present, they MUST contain the same value.
            (Some(a), Some(h)) if a.as_str() != h => {
                return Err(HeaderError::ContradictedAuthority)
            }
            (Some(_), Some(h)) => Some(host(h)?),
        };

        Ok((
            self.pseudo.method.ok_or(HeaderError::MissingMethod)?,
            // When empty host field is built into an uri it fails
            //= https://www.rfc-editor.org/rfc/rfc9114#section-4.3.1
            //# If these fields are present, they MUST NOT be
            //# empty.
            Uri::from_parts(uri).map_err(|e| HeaderError::InvalidRequest(http::Error::from(e)))?,
            self.pseudo.protocol,
            self.fields,
        ))
    }

    pub fn into_response_parts(self) -> Result<(StatusCode, HeaderMap), HeaderError> {
        //= https://www.rfc-editor.org/rfc/rfc9114#section-4.3.2
        //= type=implication
        //# For responses, a single ":status" pseudo-header field is defined that
        //# carries the HTTP status code; see Section 15 of [HTTP].  This pseudo-
        //# header field MUST be included in all responses; otherwise, the
        //# response is malformed (see Section 4.1.2).
        Ok((
            self.pseudo.status.ok_or(HeaderError::MissingStatus)?,
            self.fields,
        ))
    }

    pub fn into_fields(self) -> HeaderMap {
        self.fields
    }

    /// Tether patch (see vendor/README.md at the repository root): this field section
    /// as a whole HEADERS frame, with the section's size as RFC 9114 §4.2.2 limits it.
    /// h3's request, response and trailer paths all encode through here.
    ///
    /// The QPACK block (static table only) is written straight from the `HeaderMap` into
    /// a buffer sized once; upstream's callers built owned `HeaderField`s, copying every
    /// name and value, and grew the block as they went. The frame's type and length go
    /// in room left in front of the block, so the stream takes the frame in one write
    /// (a separate frame header had cost the transport a write of its own: a lock, an
    /// allocation and its bookkeeping).
    pub fn encode(&self) -> Result<(Bytes, u64), EncoderError> {
        /// Room for the frame header: the type (one byte) and the length (a varint).
        const ROOM: usize = 1 + 8;
        // Two bytes of prefixes per line; a longer prefix grows the block.
        let len = ROOM
            + 2
            + self
                .field_lines()
                .map(|(n, v)| n.len() + v.len() + 2)
                .sum::<usize>();
        let mut frame = BytesMut::with_capacity(len);
        frame.put_bytes(0, ROOM);
        let size = qpack::encode_stateless_borrowed(&mut frame, self.field_lines())?;

        let mut head = [0u8; ROOM];
        let mut w = &mut head[..];
        FrameType::HEADERS.encode(&mut w);
        w.write_var((frame.len() - ROOM) as u64);
        let head_len = ROOM - w.len();
        frame[ROOM - head_len..ROOM].copy_from_slice(&head[..head_len]);
        frame.advance(ROOM - head_len);
        Ok((frame.freeze(), size))
    }

    /// The field lines in the order `into_iter` yields them (pseudo-headers first),
    /// borrowed.
    fn field_lines(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let p = &self.pseudo;
        let pseudo = [
            (":method", p.method.as_ref().map(Method::as_str)),
            (":scheme", p.scheme.as_ref().map(Scheme::as_str)),
            (":authority", p.authority.as_ref().map(Authority::as_str)),
            (":path", p.path.as_ref().map(PathAndQuery::as_str)),
            (":status", p.status.as_ref().map(StatusCode::as_str)),
            (":protocol", p.protocol.as_ref().map(Protocol::as_str)),
        ];
        let fields = self.fields.iter();
        pseudo
            .into_iter()
            .filter_map(|(n, v)| Some((n.as_bytes(), v?.as_bytes())))
            .chain(fields.map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())))
    }

    pub fn len(&self) -> usize {
        self.pseudo.len() + self.fields.len()
    }

    pub fn size(&self) -> usize {
        self.pseudo.len() + self.fields.len()
    }

    #[cfg(test)]
    pub(crate) fn authory_mut(&mut self) -> &mut Option<Authority> {
        &mut self.pseudo.authority
    }
}

impl IntoIterator for Header {
    type Item = HeaderField;
    type IntoIter = HeaderIter;
    fn into_iter(self) -> Self::IntoIter {
        HeaderIter {
            pseudo: Some(self.pseudo),
            last_header_name: None,
            fields: self.fields.into_iter(),
        }
    }
}

pub struct HeaderIter {
    pseudo: Option<Pseudo>,
    last_header_name: Option<HeaderName>,
    fields: header::IntoIter<HeaderValue>,
}

impl Iterator for HeaderIter {
    type Item = HeaderField;

    fn next(&mut self) -> Option<Self::Item> {
        //= https://www.rfc-editor.org/rfc/rfc9114#section-4.3
        //# All pseudo-header fields MUST appear in the header section before
        //# regular header fields.
        if let Some(ref mut pseudo) = self.pseudo {
            if let Some(method) = pseudo.method.take() {
                return Some((":method", method.as_str()).into());
            }

            if let Some(scheme) = pseudo.scheme.take() {
                return Some((":scheme", scheme.as_str().as_bytes()).into());
            }

            if let Some(authority) = pseudo.authority.take() {
                return Some((":authority", authority.as_str().as_bytes()).into());
            }

            if let Some(path) = pseudo.path.take() {
                return Some((":path", path.as_str().as_bytes()).into());
            }

            if let Some(status) = pseudo.status.take() {
                return Some((":status", status.as_str()).into());
            }

            if let Some(protocol) = pseudo.protocol.take() {
                return Some((":protocol", protocol.as_str().as_bytes()).into());
            }
        }

        self.pseudo = None;

        for (new_header_name, header_value) in self.fields.by_ref() {
            if let Some(new) = new_header_name {
                self.last_header_name = Some(new);
            }
            if let (Some(ref n), v) = (&self.last_header_name, header_value) {
                return Some((n.as_str(), v.as_bytes()).into());
            }
        }

        None
    }
}

impl Header {
    /// Tether patch (see vendor/README.md at the repository root): a received field section
    /// decoded straight into a `Header`, its values and its `:path` and `:authority`
    /// sharing `buf`'s storage (`qpack::decode_stateless_lines`).
    ///
    /// Upstream decoded the section into a `Vec` of owned `HeaderField`s and converted
    /// that (`TryFrom<Vec<HeaderField>>`, still here for h3's own tests), copying every
    /// literal twice. The outcome is the same: a QPACK error (the caller's connection
    /// error, `HeaderTooLong` included) wins over a malformed field, which is reported
    /// as the first one `try_from` would have stopped at.
    pub fn decode_stateless(
        buf: &mut Bytes,
        max_size: u64,
    ) -> Result<Result<Self, HeaderError>, qpack::DecoderError> {
        let mut fields = HeaderMap::new();
        let mut pseudo = Pseudo::default();
        let mut malformed = None;
        qpack::decode_stateless_lines(buf, max_size, |name, value| {
            if malformed.is_some() {
                return;
            }
            match Field::parse_shared(&name, value) {
                Ok(field) => pseudo.set_or_append(field, &mut fields),
                Err(e) => malformed = Some(e),
            }
        })?;
        Ok(match malformed {
            Some(e) => Err(e),
            None => Ok(Header { pseudo, fields }),
        })
    }
}

impl TryFrom<Vec<HeaderField>> for Header {
    type Error = HeaderError;
    fn try_from(headers: Vec<HeaderField>) -> Result<Self, Self::Error> {
        let mut fields = HeaderMap::with_capacity(headers.len());
        let mut pseudo = Pseudo::default();

        for field in headers.into_iter() {
            let (name, value) = field.into_inner();
            pseudo.set_or_append(Field::parse(name, value)?, &mut fields);
        }

        Ok(Header { pseudo, fields })
    }
}

enum Field {
    Method(Method),
    Scheme(Scheme),
    Authority(Authority),
    Path(PathAndQuery),
    Status(StatusCode),
    Protocol(Protocol),
    Header((HeaderName, HeaderValue)),
}

impl Field {
    /// Tether patch (see vendor/README.md at the repository root): upstream's checks live
    /// in `parse_shared` now; a static value is shared as it is, and a decoded `Vec`
    /// becomes the value's storage, neither copied.
    fn parse<N>(name: N, value: Cow<'static, [u8]>) -> Result<Self, HeaderError>
    where
        N: AsRef<[u8]>,
    {
        let value = match value {
            Cow::Borrowed(b) => Bytes::from_static(b),
            Cow::Owned(v) => Bytes::from(v),
        };
        Self::parse_shared(name.as_ref(), value)
    }

    /// Tether patch: `parse` for a line whose value is `Bytes` (`Header::decode_stateless`):
    /// field values, `:path` and `:authority` keep the value's storage instead of copying
    /// it. The checks, and the errors, are upstream's `parse`'s.
    fn parse_shared(name: &[u8], value: Bytes) -> Result<Self, HeaderError> {
        if name.is_empty() {
            return Err(HeaderError::InvalidHeaderName("name is empty".into()));
        }

        //= https://www.rfc-editor.org/rfc/rfc9114#section-10.3
        //# Requests or responses containing invalid field names MUST be treated
        //# as malformed.

        //= https://www.rfc-editor.org/rfc/rfc9114#section-10.3
        //# Any request or response that contains a
        //# character not permitted in a field value MUST be treated as
        //# malformed.

        //= https://www.rfc-editor.org/rfc/rfc9114#section-4.2
        //= type=implication
        //# A request or
        //# response containing uppercase characters in field names MUST be
        //# treated as malformed.

        if name[0] != b':' {
            let header_name =
                HeaderName::from_lowercase(name).map_err(|_| HeaderError::invalid_name(name))?;
            let value = HeaderValue::from_maybe_shared(value).map_err(|_| {
                HeaderError::InvalidHeaderValue(format!(
                    "{:?}: not a valid field value",
                    String::from_utf8_lossy(name)
                ))
            })?;
            return Ok(Field::Header((header_name, value)));
        }
        match name {
            b":scheme" => Ok(Field::Scheme(try_value(name, &value)?)),
            //= https://www.rfc-editor.org/rfc/rfc9114#section-4.3.1
            //# If these fields are present, they MUST NOT be
            //# empty.
            b":authority" => Ok(Field::Authority(shared_value(
                name,
                value,
                Authority::from_maybe_shared,
            )?)),
            b":path" => Ok(Field::Path(shared_value(
                name,
                value,
                PathAndQuery::from_maybe_shared,
            )?)),
            b":method" => Ok(Field::Method(
                Method::from_bytes(&value).map_err(|_| HeaderError::invalid_value(name, &value))?,
            )),
            b":status" => Ok(Field::Status(
                StatusCode::from_bytes(&value)
                    .map_err(|_| HeaderError::invalid_value(name, &value))?,
            )),
            b":protocol" => Ok(Field::Protocol(try_value(name, &value)?)),
            _ => Err(HeaderError::invalid_name(name)),
        }
    }
}

/// Tether patch: `try_value` for a `Bytes` value, parsed where it lies: the UTF-8 check
/// of `try_value`, then `parse` on the value's own storage.
fn shared_value<R, E>(
    name: &[u8],
    value: Bytes,
    parse: impl FnOnce(Bytes) -> Result<R, E>,
) -> Result<R, HeaderError> {
    if std::str::from_utf8(&value).is_err() {
        return Err(HeaderError::invalid_value(name, value));
    }
    parse(value.clone()).map_err(|_| HeaderError::invalid_value(name, value))
}

fn try_value<N, V, R>(name: N, value: V) -> Result<R, HeaderError>
where
    N: AsRef<[u8]>,
    V: AsRef<[u8]>,
    R: FromStr,
{
    let (name, value) = (name.as_ref(), value.as_ref());
    let s = std::str::from_utf8(value).map_err(|_| HeaderError::invalid_value(name, value))?;
    R::from_str(s).map_err(|_| HeaderError::invalid_value(name, value))
}

/// Pseudo-header fields have the same purpose as data from the first line of HTTP/1.X,
/// but are conveyed along with other headers. For example ':method' and ':path' in a
/// request, and ':status' in a response. They must be placed before all other fields,
/// start with ':', and be lowercase.
/// See RFC7540 section 8.1.2.1. for more details.
#[derive(Debug, Default)]
#[cfg_attr(test, derive(PartialEq, Clone))]
struct Pseudo {
    //= https://www.rfc-editor.org/rfc/rfc9114#section-4.3
    //= type=implication
    //# Endpoints MUST NOT
    //# generate pseudo-header fields other than those defined in this
    //# document.

    // Request
    method: Option<Method>,
    scheme: Option<Scheme>,
    authority: Option<Authority>,
    path: Option<PathAndQuery>,

    // Response
    status: Option<StatusCode>,

    protocol: Option<Protocol>,

    len: usize,
}

#[allow(clippy::len_without_is_empty)]
impl Pseudo {
    /// Tether patch: one parsed line into the pseudo-header it sets, or appended to
    /// `fields` (shared by `TryFrom<Vec<HeaderField>>` and `Header::decode_stateless`).
    fn set_or_append(&mut self, field: Field, fields: &mut HeaderMap) {
        match field {
            Field::Method(m) => {
                self.method = Some(m);
                self.len += 1;
            }
            Field::Scheme(s) => {
                self.scheme = Some(s);
                self.len += 1;
            }
            Field::Authority(a) => {
                self.authority = Some(a);
                self.len += 1;
            }
            Field::Path(p) => {
                self.path = Some(p);
                self.len += 1;
            }
            Field::Status(s) => {
                self.status = Some(s);
                self.len += 1;
            }
            Field::Header((n, v)) => {
                fields.append(n, v);
            }
            Field::Protocol(p) => {
                self.protocol = Some(p);
                self.len += 1;
            }
        }
    }

    fn request(method: Method, uri: Uri, ext: Extensions) -> Self {
        let Parts {
            scheme,
            authority,
            path_and_query,
            ..
        } = uri::Parts::from(uri);

        //= https://www.rfc-editor.org/rfc/rfc9114#section-4.3.1
        //= type=implication
        //# This pseudo-header field MUST NOT be empty for "http" or "https"
        //# URIs; "http" or "https" URIs that do not contain a path component
        //# MUST include a value of / (ASCII 0x2f).
        let path = path_and_query.map_or_else(
            || PathAndQuery::from_static("/"),
            |path| {
                if path.path().is_empty() && method != Method::OPTIONS {
                    PathAndQuery::from_static("/")
                } else {
                    path
                }
            },
        );

        // If the method is connect, the `:protocol` pseudo-header MAY be defined
        //
        // See: [https://www.rfc-editor.org/rfc/rfc8441#section-4]
        let protocol = if method == Method::CONNECT {
            ext.get::<Protocol>().copied()
        } else {
            None
        };

        let len = 3 + authority.is_some() as usize + protocol.is_some() as usize;

        //= https://www.rfc-editor.org/rfc/rfc9114#section-4.3
        //= type=implication
        //# Pseudo-header fields defined for requests MUST NOT appear
        //# in responses; pseudo-header fields defined for responses MUST NOT
        //# appear in requests.

        //= https://www.rfc-editor.org/rfc/rfc9114#section-4.3.1
        //= type=implication
        //# All HTTP/3 requests MUST include exactly one value for the :method,
        //# :scheme, and :path pseudo-header fields, unless the request is a
        //# CONNECT request; see Section 4.4.
        Self {
            method: Some(method),
            scheme: scheme.or(Some(Scheme::HTTPS)),
            authority,
            path: Some(path),
            status: None,
            protocol,
            len,
        }
    }

    fn response(status: StatusCode) -> Self {
        //= https://www.rfc-editor.org/rfc/rfc9114#section-4.3
        //= type=implication
        //# Pseudo-header fields defined for requests MUST NOT appear
        //# in responses; pseudo-header fields defined for responses MUST NOT
        //# appear in requests.
        Pseudo {
            method: None,
            scheme: None,
            authority: None,
            path: None,
            status: Some(status),
            len: 1,
            protocol: None,
        }
    }

    fn len(&self) -> usize {
        self.len
    }
}

#[derive(Debug)]
pub enum HeaderError {
    InvalidHeaderName(String),
    InvalidHeaderValue(String),
    InvalidRequest(http::Error),
    MissingMethod,
    MissingStatus,
    MissingAuthority,
    ContradictedAuthority,
}

impl HeaderError {
    fn invalid_name<N>(name: N) -> Self
    where
        N: AsRef<[u8]>,
    {
        HeaderError::InvalidHeaderName(format!("{:?}", name.as_ref()))
    }

    fn invalid_value<N, V>(name: N, value: V) -> Self
    where
        N: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        HeaderError::InvalidHeaderValue(format!(
            "{:?} {:?}",
            String::from_utf8_lossy(name.as_ref()),
            value.as_ref()
        ))
    }
}

impl std::error::Error for HeaderError {}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::InvalidHeaderName(h) => write!(f, "invalid header name: {}", h),
            HeaderError::InvalidHeaderValue(v) => write!(f, "invalid header value: {}", v),
            HeaderError::InvalidRequest(r) => write!(f, "invalid request: {}", r),
            HeaderError::MissingMethod => write!(f, "missing method in request headers"),
            HeaderError::MissingStatus => write!(f, "missing status in response headers"),
            HeaderError::MissingAuthority => write!(f, "missing authority"),
            HeaderError::ContradictedAuthority => {
                write!(f, "uri and authority field are in contradiction")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use assert_matches::assert_matches;

    #[test]
    fn request_has_no_authority_nor_host() {
        //= https://www.rfc-editor.org/rfc/rfc9114#section-4.3.1
        //= type=test
        //# If the :scheme pseudo-header field identifies a scheme that has a
        //# mandatory authority component (including "http" and "https"), the
        //# request MUST contain either an :authority pseudo-header field or a
        //# Host header field.
        let headers = Header::try_from(vec![(b":method", Method::GET.as_str()).into()]).unwrap();
        assert!(headers.pseudo.authority.is_none());
        assert_matches!(
            headers.into_request_parts(),
            Err(HeaderError::MissingAuthority)
        );
    }

    #[test]
    fn request_has_empty_authority() {
        //= https://www.rfc-editor.org/rfc/rfc9114#section-4.3.1
        //= type=test
        //# If these fields are present, they MUST NOT be
        //# empty.
        assert_matches!(
            Header::try_from(vec![
                (b":method", Method::GET.as_str()).into(),
                (b":authority", b"").into(),
            ]),
            Err(HeaderError::InvalidHeaderValue(_))
        );
    }

    #[test]
    fn request_has_empty_host() {
        //= https://www.rfc-editor.org/rfc/rfc9114#section-4.3.1
        //= type=test
        //# If these fields are present, they MUST NOT be
        //# empty.
        let headers = Header::try_from(vec![
            (b":method", Method::GET.as_str()).into(),
            (b"host", b"").into(),
        ])
        .unwrap();
        assert_matches!(
            headers.into_request_parts(),
            Err(HeaderError::InvalidRequest(_))
        );
    }

    #[test]
    fn request_has_authority() {
        //= https://www.rfc-editor.org/rfc/rfc9114#section-4.3.1
        //= type=test
        //# If the :scheme pseudo-header field identifies a scheme that has a
        //# mandatory authority component (including "http" and "https"), the
        //# request MUST contain either an :authority pseudo-header field or a
        //# Host header field.
        let headers = Header::try_from(vec![
            (b":method", Method::GET.as_str()).into(),
            (b":authority", b"test.com").into(),
        ])
        .unwrap();
        assert_matches!(headers.into_request_parts(), Ok(_));
    }

    #[test]
    fn request_has_host() {
        //= https://www.rfc-editor.org/rfc/rfc9114#section-4.3.1
        //= type=test
        //# If the :scheme pseudo-header field identifies a scheme that has a
        //# mandatory authority component (including "http" and "https"), the
        //# request MUST contain either an :authority pseudo-header field or a
        //# Host header field.
        let headers = Header::try_from(vec![
            (b":method", Method::GET.as_str()).into(),
            (b"host", b"test.com").into(),
        ])
        .unwrap();
        assert!(headers.pseudo.authority.is_none());
        assert_matches!(headers.into_request_parts(), Ok(_));
    }

    #[test]
    fn request_has_same_host_and_authority() {
        //= https://www.rfc-editor.org/rfc/rfc9114#section-4.3.1
        //= type=test
        //# If both fields are present, they MUST contain the same value.
        let headers = Header::try_from(vec![
            (b":method", Method::GET.as_str()).into(),
            (b":authority", b"test.com").into(),
            (b"host", b"test.com").into(),
        ])
        .unwrap();
        assert_matches!(headers.into_request_parts(), Ok(_));
    }
    #[test]
    fn request_has_different_host_and_authority() {
        //= https://www.rfc-editor.org/rfc/rfc9114#section-4.3.1
        //= type=test
        //# If both fields are present, they MUST contain the same value.
        let headers = Header::try_from(vec![
            (b":method", Method::GET.as_str()).into(),
            (b":authority", b"authority.com").into(),
            (b"host", b"host.com").into(),
        ])
        .unwrap();
        assert_matches!(
            headers.into_request_parts(),
            Err(HeaderError::ContradictedAuthority)
        );
    }

    #[test]
    fn preserves_duplicate_headers() {
        let headers = Header::try_from(vec![
            (b":method", Method::GET.as_str()).into(),
            (b":authority", b"test.com").into(),
            (b"set-cookie", b"foo=foo").into(),
            (b"set-cookie", b"bar=bar").into(),
            (b"other-header", b"other-header-value").into(),
        ])
        .unwrap();

        assert_eq!(
            headers
                .clone()
                .into_iter()
                .filter(|h| h.name.as_ref() == b"set-cookie")
                .collect::<Vec<_>>(),
            vec![
                HeaderField {
                    name: std::borrow::Cow::Borrowed(b"set-cookie"),
                    value: std::borrow::Cow::Borrowed(b"foo=foo")
                },
                HeaderField {
                    name: std::borrow::Cow::Borrowed(b"set-cookie"),
                    value: std::borrow::Cow::Borrowed(b"bar=bar")
                }
            ]
        );
        assert_eq!(
            headers
                .into_iter()
                .filter(|h| h.name.as_ref() == b"other-header")
                .collect::<Vec<_>>(),
            vec![HeaderField {
                name: std::borrow::Cow::Borrowed(b"other-header"),
                value: std::borrow::Cow::Borrowed(b"other-header-value")
            },]
        );
    }

    // Tether patch: `Header::decode_stateless` against upstream's decode-then-convert.

    fn block_of(lines: &[(&str, &str)]) -> Bytes {
        let mut block = BytesMut::new();
        let lines = lines.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()));
        qpack::encode_stateless_borrowed(&mut block, lines).unwrap();
        block.freeze()
    }

    fn upstream(block: &Bytes) -> Result<Result<Header, HeaderError>, qpack::DecoderError> {
        let decoded = qpack::decode_stateless(&mut block.clone(), u64::MAX)?;
        Ok(Header::try_from(decoded.fields))
    }

    fn shared(block: &Bytes) -> Result<Result<Header, HeaderError>, qpack::DecoderError> {
        Header::decode_stateless(&mut block.clone(), u64::MAX)
    }

    #[test]
    fn decode_stateless_builds_what_try_from_builds() {
        let request = block_of(&[
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "svc.internal:8443"),
            (":path", "/v1/items?x=1&y=%20"),
            ("x-node-id", "node-1"),
            ("x-forwarded-for", "10.0.0.1, 127.0.0.1"),
            ("content-length", "12"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("x-utf8", "caf\u{e9}"),
        ]);
        let got = shared(&request).unwrap().unwrap();
        assert_eq!(got, upstream(&request).unwrap().unwrap());
        let (method, uri, protocol, fields) = got.into_request_parts().unwrap();
        assert_eq!(method, Method::POST);
        assert_eq!(uri, "https://svc.internal:8443/v1/items?x=1&y=%20");
        assert_eq!(protocol, None);
        assert_eq!(fields.get_all("set-cookie").iter().count(), 2);
        assert_eq!(fields["x-utf8"].as_bytes(), "caf\u{e9}".as_bytes());

        let response = block_of(&[
            (":status", "200"),
            ("content-length", "1024"),
            ("date", "x"),
        ]);
        let got = shared(&response).unwrap().unwrap();
        assert_eq!(got, upstream(&response).unwrap().unwrap());
        let (status, fields) = got.into_response_parts().unwrap();
        assert_eq!((status, fields.len()), (StatusCode::OK, 2));
    }

    #[test]
    fn decode_stateless_refuses_what_try_from_refuses() {
        let malformed: [&[(&str, &str)]; 8] = [
            &[(":method", "GET"), ("Upper", "x")],
            &[(":method", "GET"), ("x-bad", "a\nb")],
            &[(":method", "G T")],
            &[(":status", "2000")],
            &[(":authority", "")],
            &[(":authority", "a b")],
            &[(":path", "/a b")],
            &[(":other", "x")],
        ];
        for lines in malformed {
            let block = block_of(lines);
            assert!(upstream(&block).unwrap().is_err(), "{lines:?}");
            assert!(shared(&block).unwrap().is_err(), "{lines:?}");
        }
        // A malformed line, then a QPACK error: the QPACK error wins, as upstream.
        let mut block = BytesMut::from(&block_of(&[("Upper", "x")])[..]);
        block.extend_from_slice(&[0x80 | 1]); // indexed, dynamic
        let block = block.freeze();
        assert!(upstream(&block).is_err());
        assert!(shared(&block).is_err());
    }

    #[test]
    fn decode_stateless_keeps_values_in_the_buffer() {
        let block = block_of(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "example.com"),
            (":path", "/fixed"),
            ("x-node-id", "bench"),
        ]);
        let range = block.as_ptr() as usize..block.as_ptr() as usize + block.len();
        let (_, uri, _, fields) = shared(&block)
            .unwrap()
            .unwrap()
            .into_request_parts()
            .unwrap();
        assert!(range.contains(&(fields["x-node-id"].as_bytes().as_ptr() as usize)));
        assert!(range.contains(&(uri.path().as_ptr() as usize)));
        assert!(range.contains(&(uri.authority().unwrap().as_str().as_ptr() as usize)));
    }
}
