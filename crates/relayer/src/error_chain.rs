//! One-line error text with every cause: tonic's, hyper's and reqwest's
//! top-level errors alone ("transport error") tell a user nothing.

/// The whole `source()` chain in one line: tonic's top-level transport error
/// alone ("transport error") tells a user nothing.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
