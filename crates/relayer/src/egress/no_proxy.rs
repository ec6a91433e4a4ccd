//! `NO_PROXY` as curl reads it: a comma-separated list of host names (each
//! also matching its subdomains), domain suffixes with a leading dot, IP
//! addresses, CIDR blocks, and `*` for everything. Ports in entries are
//! ignored; comparisons are case-insensitive.

use std::net::IpAddr;

/// Which hosts are reached directly whatever proxy is configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    everything: bool,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// A name: itself and every subdomain.
    Domain(String),
    Ip(IpAddr),
    Cidr(IpAddr, u8),
}

impl NoProxy {
    pub fn parse(list: &str) -> Self {
        let mut no_proxy = Self::default();
        for raw in list
            .split([',', ' '])
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            if raw == "*" {
                no_proxy.everything = true;
                continue;
            }
            if let Some(entry) = Entry::parse(raw) {
                no_proxy.entries.push(entry);
            }
        }
        no_proxy
    }

    pub fn is_empty(&self) -> bool {
        !self.everything && self.entries.is_empty()
    }

    /// Whether `host` (a name or an IP, IPv6 with or without brackets)
    /// bypasses the proxy.
    pub fn matches(&self, host: &str) -> bool {
        if self.everything {
            return true;
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        self.entries.iter().any(|entry| match (entry, ip) {
            (Entry::Domain(domain), _) => {
                host == *domain
                    || (host.len() > domain.len()
                        && host.ends_with(domain.as_str())
                        && host.as_bytes()[host.len() - domain.len() - 1] == b'.')
            }
            (Entry::Ip(entry), Some(ip)) => *entry == ip,
            (Entry::Cidr(network, prefix), Some(ip)) => in_cidr(ip, *network, *prefix),
            _ => false,
        })
    }
}

impl Entry {
    fn parse(raw: &str) -> Option<Self> {
        let raw = raw.to_ascii_lowercase();
        if let Some((network, prefix)) = raw.split_once('/') {
            let network = network.trim_start_matches('[').trim_end_matches(']');
            let network: IpAddr = network.parse().ok()?;
            let prefix: u8 = prefix.parse().ok()?;
            let max = if network.is_ipv4() { 32 } else { 128 };
            return (prefix <= max).then_some(Entry::Cidr(network, prefix));
        }
        // A bracketed IPv6 address, possibly with a port.
        if let Some(rest) = raw.strip_prefix('[') {
            let ip = rest.split(']').next()?;
            return ip.parse().ok().map(Entry::Ip);
        }
        if let Ok(ip) = raw.parse::<IpAddr>() {
            return Some(Entry::Ip(ip));
        }
        let name = match raw.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => raw.as_str(),
        };
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Some(Entry::Ip(ip));
        }
        let name = name.trim_start_matches("*.").trim_start_matches('.');
        let name = name.trim_end_matches('.');
        (!name.is_empty()).then(|| Entry::Domain(name.to_string()))
    }
}

fn in_cidr(ip: IpAddr, network: IpAddr, prefix: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(network)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(network) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(network)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(network) & mask
        }
        // An IPv4-mapped IPv6 address against an IPv4 block.
        (IpAddr::V6(ip), IpAddr::V4(_)) => ip
            .to_ipv4_mapped()
            .is_some_and(|ip| in_cidr(IpAddr::V4(ip), network, prefix)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curl_semantics() {
        let list =
            "corp.example, .svc ,10.0.0.0/8, 192.168.1.7,[fd00::1], fc00::/7,internal:8443,*.lab";
        let no_proxy = NoProxy::parse(list);
        let rows: [(&str, bool); 18] = [
            ("corp.example", true),
            ("api.corp.example", true),
            ("CORP.EXAMPLE.", true),
            ("notcorp.example", false),
            ("corp.example.org", false),
            ("relayer.consonant.svc", true),
            ("svc", true),
            ("10.1.2.3", true),
            ("11.1.2.3", false),
            ("192.168.1.7", true),
            ("192.168.1.8", false),
            ("[fd00::1]", true),
            ("fd00::2", true), // in fc00::/7
            ("2001:db8::1", false),
            ("internal", true), // the port in the entry is ignored
            ("gpu.lab", true),
            ("backend.company.com", false),
            ("::ffff:10.0.0.1", true), // IPv4-mapped, in 10.0.0.0/8
        ];
        for (host, bypass) in rows {
            assert_eq!(no_proxy.matches(host), bypass, "{host} against {list}");
        }
    }

    #[test]
    fn star_empty_and_garbage() {
        assert!(NoProxy::parse("*").matches("anything.example"));
        assert!(NoProxy::parse("a, *").matches("1.2.3.4"));
        let empty = NoProxy::parse("");
        assert!(empty.is_empty());
        assert!(!empty.matches("localhost"));
        // Unparseable entries are skipped, the rest still count.
        let mixed = NoProxy::parse("10.0.0.0/99, /8, host.example");
        assert!(!mixed.matches("10.0.0.1"));
        assert!(mixed.matches("host.example"));
        assert!(NoProxy::parse("0.0.0.0/0").matches("8.8.8.8"));
    }
}
