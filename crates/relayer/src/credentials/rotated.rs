//! What a `RotateCredentials` token must look like before the relayer takes
//! it (protocol.md, "Answers to edge cases"): 16–4096 bytes of visible
//! ASCII. Anything else — a byte that is illegal in an HTTP header, an
//! empty or huge token — would make every later dial fail before reaching
//! the backend and would be written back to the Secret, leaving the cluster
//! offline until re-registered; such a token is ignored instead.

/// Why `token` is not acceptable as a rotated cluster token, if it is not.
/// The reason never contains the token.
pub fn rotated_token_problem(token: &str) -> Option<String> {
    let len = token.len();
    if !(16..=4096).contains(&len) {
        return Some(format!(
            "the rotated token is {len} bytes long; a cluster token is 16 to 4096 bytes"
        ));
    }
    if let Some(at) = token.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
        return Some(format!(
            "the rotated token has a byte that is not visible ASCII at offset {at} (it could not be sent in an HTTP header)"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_ascii_of_a_sane_length_is_taken() {
        let long = "a".repeat(4097);
        for (token, mentions) in [
            ("R3jK8mN2pQ5sT9vW1xY4zA6bC7dE0fF3", None),
            (&"x".repeat(16)[..], None),
            (&"x".repeat(4096)[..], None),
            ("", Some("0 bytes")),
            ("short-token", Some("11 bytes")),
            (&long[..], Some("4097 bytes")),
            ("valid-prefix-0123\nX-Injected: 1", Some("offset 17")),
            ("token with spaces inside it", Some("offset 5")),
            ("tökentökentökentöken", Some("offset 1")),
        ] {
            let problem = rotated_token_problem(token);
            match mentions {
                None => assert_eq!(problem, None, "{token:?}"),
                Some(text) => {
                    let problem = problem.unwrap_or_default();
                    assert!(problem.contains(text), "{token:?}: {problem}");
                    if token.len() > 3 {
                        assert!(!problem.contains(token), "never the token itself");
                    }
                }
            }
        }
    }
}
