//! An error with its causes on one line, for logs and error details: hyper, quinn and
//! std errors keep the useful part ("Connection refused") in `source()`, not in their
//! own message.

/// `e` and each of its sources, joined by ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("tcp connect error")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn joins_the_causes() {
        let e = Outer(std::io::Error::other("refused"));
        assert_eq!(error_chain(&e), "tcp connect error: refused");
    }
}
