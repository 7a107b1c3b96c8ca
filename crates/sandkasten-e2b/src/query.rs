//! Query strings as the SDKs write them (`application/x-www-form-urlencoded`).

/// The query's pairs in order, decoded (`+` is a space, `%XX` a byte;
/// invalid UTF-8 replaced).
pub(crate) fn pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

/// One form-encoded component.
pub(crate) fn form_decode(s: &str) -> String {
    percent_decode(&s.replace('+', " "))
}

/// `%XX` escapes decoded; a `%` not followed by two hex digits is kept.
pub(crate) fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_decoded() {
        assert_eq!(
            pairs(Some("path=%2Fa%20b+c&username=user&x&&%zz=%e2%82%ac%")),
            vec![
                ("path".to_string(), "/a b c".to_string()),
                ("username".to_string(), "user".to_string()),
                ("x".to_string(), String::new()),
                ("%zz".to_string(), "€%".to_string()),
            ]
        );
        assert!(pairs(None).is_empty());
    }
}
