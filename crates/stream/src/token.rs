//! Single-use URL tokens: random, expiring after a TTL, bounded in number,
//! as the kubelet streaming server's request cache.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

/// Too many requests are waiting for their URL to be used.
#[derive(Debug, thiserror::Error)]
#[error("too many streaming requests in flight ({0}); try again later")]
pub struct Full(pub usize);

pub struct TokenCache<T> {
    entries: Mutex<HashMap<String, (Instant, T)>>,
    ttl: Duration,
    max_in_flight: usize,
}

impl<T> TokenCache<T> {
    pub fn new(ttl: Duration, max_in_flight: usize) -> TokenCache<T> {
        TokenCache {
            entries: Mutex::new(HashMap::new()),
            ttl,
            max_in_flight,
        }
    }

    /// Stores `value` under a new token.
    pub fn insert(&self, value: T) -> Result<String, Full> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        entries.retain(|_, (expires, _)| *expires > now);
        if entries.len() >= self.max_in_flight {
            return Err(Full(self.max_in_flight));
        }
        loop {
            let token = new_token();
            if !entries.contains_key(&token) {
                entries.insert(token.clone(), (now + self.ttl, value));
                return Ok(token);
            }
        }
    }

    /// The value of a live token, which is used up by this call.
    pub fn take(&self, token: &str) -> Option<T> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (expires, value) = entries.remove(token)?;
        (expires > Instant::now()).then_some(value)
    }
}

/// 128 random bits, URL-safe.
fn new_token() -> String {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        match rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("getrandom failed: {e}"),
        }
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use_expiring_bounded() {
        let cache = TokenCache::new(Duration::from_millis(200), 2);
        let a = cache.insert("a").unwrap();
        let b = cache.insert("b").unwrap();
        assert_ne!(a, b);
        assert!(a.len() >= 20);
        assert!(cache.insert("c").is_err(), "bounded");
        assert_eq!(cache.take(&a), Some("a"));
        assert_eq!(cache.take(&a), None, "single use");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(cache.take(&b), None, "expired");
        assert!(cache.insert("d").is_ok(), "expired entries make room");
        assert_eq!(cache.take("nonsense"), None);
    }
}
