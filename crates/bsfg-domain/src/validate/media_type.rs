//! Media types of objects and attachments (RFC 6838 names, RFC 9110
//! parameters).

use crate::bounded::bounded;
use crate::limits::TEXT_FIELD_BYTES_MAX;
use crate::reason::Reason;
use crate::rejection::Rejection;

/// RFC 6838 `restricted-name`: a media type's type or subtype.
fn is_media_type_name(value: &str) -> bool {
    (1..=127).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
}

/// RFC 9110 `token`: a parameter name or unquoted value.
fn is_token(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

/// A media type (of an object or an attachment): empty (none declared) or
/// `type/subtype` with optional `; name=value` parameters (a value is a
/// token or a quoted string), printable ASCII, at most
/// [`TEXT_FIELD_BYTES_MAX`] bytes, e.g. `application/pdf` or
/// `text/plain; charset=utf-8`. It is stored with the object and returned
/// to every reader, in every zone it reaches.
pub fn media_type(field: &str, value: &str) -> Result<(), Rejection> {
    if value.is_empty() {
        return Ok(());
    }
    let bad = |why: &str| {
        Rejection::invalid(
            Reason::BadMediaType,
            format!(
                "{field} {:?} {why}; expected type/subtype with optional parameters, e.g. application/pdf or text/plain; charset=utf-8",
                bounded(value)
            ),
        )
    };
    if value.len() > TEXT_FIELD_BYTES_MAX {
        return Err(bad(&format!("is longer than {TEXT_FIELD_BYTES_MAX} bytes")));
    }
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(bad("has a character other than printable ASCII"));
    }
    let (essence, mut rest) = value.split_at(value.find(';').unwrap_or(value.len()));
    let names_ok = essence
        .trim_end_matches(' ')
        .split_once('/')
        .is_some_and(|(t, s)| is_media_type_name(t) && is_media_type_name(s));
    if !names_ok {
        return Err(bad(
            "is not type/subtype (letters, digits and ! # $ & - ^ _ . +, each starting with a letter or digit)",
        ));
    }
    while let Some(parameter) = rest.strip_prefix(';') {
        let (name, value) = parameter
            .trim_start_matches(' ')
            .split_once('=')
            .ok_or_else(|| bad("has a parameter that is not name=value"))?;
        if !is_token(name) {
            return Err(bad("has a parameter name that is not a token"));
        }
        let after = if let Some(quoted) = value.strip_prefix('"') {
            let mut escaped = false;
            let end = quoted.char_indices().find_map(|(i, c)| {
                let closes = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                closes.then_some(i)
            });
            &quoted[end
                .ok_or_else(|| bad("has a quoted parameter value without its closing quote"))?
                + 1..]
        } else {
            let end = value.find([';', ' ']).unwrap_or(value.len());
            if !is_token(&value[..end]) {
                return Err(bad(
                    "has a parameter value that is neither a token nor a quoted string",
                ));
            }
            &value[end..]
        };
        rest = after.trim_start_matches(' ');
    }
    if !rest.is_empty() {
        return Err(bad("has text after a parameter"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        for good in [
            "",
            "application/pdf",
            "image/svg+xml",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "text/plain; charset=utf-8",
            "text/plain;charset=UTF-8;format=flowed",
            "text/plain ; charset=utf-8",
            r#"multipart/mixed; boundary="a b;c\"d""#,
            "application/x.batch-record+json; version=2",
        ] {
            media_type("media_type", good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
        for bad in [
            "pdf",
            "application/",
            "/pdf",
            "application/pdf/x",
            " application/pdf",
            "application/pdf\n",
            "application/pdf\u{7f}",
            "applicatión/pdf",
            "text/plain; charset",
            "text/plain; charset=",
            "text/plain; =utf-8",
            "text/plain; charset=\"utf-8",
            "text/plain; charset=utf 8",
            "text/plain; charset=\"utf-8\"x",
            "application/(pdf)",
        ] {
            let refused = media_type("media_type", bad).expect_err(bad);
            assert_eq!(
                (refused.code, refused.reason),
                (crate::Code::InvalidArgument, Reason::BadMediaType),
                "{bad:?}"
            );
        }
        let long = format!("application/{}", "x".repeat(TEXT_FIELD_BYTES_MAX));
        assert_eq!(
            media_type("media_type", &long).unwrap_err().reason,
            Reason::BadMediaType
        );
    }
}
