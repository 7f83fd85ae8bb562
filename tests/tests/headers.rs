//! Header fields cross the tunnel byte for byte, in both directions.
//!
//! The relay encodes the request head and decodes the response head with QPACK, the agent
//! the other way round, and both write literals raw rather than Huffman-coded (the patch
//! in vendor/h3). This test sends the shapes of field that take different paths through
//! that code: names and values longer than a one-byte length prefix holds, an empty
//! value, UTF-8 and obs-text bytes, punctuation, a repeated field and many fields.

use tether_e2e::{client, World};

/// The fields sent, as (name, value bytes), in order; `x-reflect-twice` twice.
fn fields() -> Vec<(String, Vec<u8>)> {
    let long_value: Vec<u8> = (0..6000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut f = vec![
        ("x-reflect-long".to_owned(), long_value),
        (format!("x-reflect-{}", "n".repeat(300)), b"v".to_vec()),
        ("x-reflect-empty".to_owned(), Vec::new()),
        (
            "x-reflect-utf8".to_owned(),
            "café ✓ 東京".as_bytes().to_vec(),
        ),
        // obs-text and an inner tab: legal in a field value, and not ASCII text.
        (
            "x-reflect-obs".to_owned(),
            vec![0x80, 0xff, b' ', b'\t', b'x'],
        ),
        (
            "x-reflect-punct".to_owned(),
            br#"a=b; c="d", e/f?g&h#i%20"#.to_vec(),
        ),
        ("x-reflect-twice".to_owned(), b"one".to_vec()),
        ("x-reflect-twice".to_owned(), b"two".to_vec()),
    ];
    for i in 0..30 {
        f.push((format!("x-reflect-n{i}"), i.to_string().into_bytes()));
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_fields_cross_the_tunnel_byte_for_byte_both_ways() {
    let w = World::new();
    let _a = w.site("node-a", "west", 1).await;
    let sent = fields();

    let mut req = client()
        .get(w.relay.url("/reflect"))
        .header("x-node-id", "node-a");
    for (name, value) in &sent {
        let value = reqwest::header::HeaderValue::from_bytes(value).unwrap();
        req = req.header(name.as_str(), value);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);

    // The service sent back exactly the x-reflect-* fields it received, so what arrives
    // here went through the tunnel twice: request head down, response head up.
    let got: Vec<(String, Vec<u8>)> = r
        .headers()
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("x-reflect-"))
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    let mut want = sent.clone();
    // A header map groups a repeated field's values; compare as sorted lists, after
    // checking the repeated field kept both values in order.
    let twice: Vec<&[u8]> = r
        .headers()
        .get_all("x-reflect-twice")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    assert_eq!(twice, [b"one".as_slice(), b"two".as_slice()]);
    let mut got_sorted = got;
    got_sorted.sort();
    want.sort();
    assert_eq!(got_sorted.len(), want.len(), "fields lost or added");
    for (g, s) in got_sorted.iter().zip(&want) {
        assert_eq!(g, s, "field {} changed on the way", s.0);
    }
    assert_eq!(r.text().await.unwrap(), "reflected");
}
