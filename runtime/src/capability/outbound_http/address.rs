//! Which IP addresses are internal: the ranges a guest must not reach
//! unless an `allowed_outbound_hosts` entry names the address exactly.
//! IPv6 forms that carry an IPv4 address (mapped, translated, NAT64, 6to4)
//! are judged by the address they carry.

use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IPv4 ranges that are not the public internet (RFC 6890 and successors).
const INTERNAL_V4: [Ipv4Net; 15] = [
    v4(0, 0, 0, 0, 8),       // "this network", 0.0.0.0 included
    v4(10, 0, 0, 0, 8),      // private
    v4(100, 64, 0, 0, 10),   // shared address space (CGNAT)
    v4(127, 0, 0, 0, 8),     // loopback
    v4(169, 254, 0, 0, 16),  // link-local, cloud metadata at 169.254.169.254
    v4(172, 16, 0, 0, 12),   // private
    v4(192, 0, 0, 0, 24),    // IETF protocol assignments (DS-Lite, NAT64 discovery)
    v4(192, 0, 2, 0, 24),    // documentation (TEST-NET-1)
    v4(192, 88, 99, 0, 24),  // 6to4 relay anycast, deprecated
    v4(192, 168, 0, 0, 16),  // private
    v4(198, 18, 0, 0, 15),   // benchmarking
    v4(198, 51, 100, 0, 24), // documentation (TEST-NET-2)
    v4(203, 0, 113, 0, 24),  // documentation (TEST-NET-3)
    v4(224, 0, 0, 0, 4),     // multicast
    v4(240, 0, 0, 0, 4),     // reserved, 255.255.255.255 broadcast included
];

/// IPv6 ranges that are not the public internet, or that tunnel to
/// addresses hidden from a check (Teredo obfuscates the IPv4 it carries).
const INTERNAL_V6: [Ipv6Net; 12] = [
    v6([0, 0, 0, 0, 0, 0, 0, 0], 96), // IPv4-compatible (deprecated), :: and ::1 included
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), // NAT64 local-use translation
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), // discard-only
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32), // Teredo
    v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48), // benchmarking
    v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28), // ORCHID, deprecated
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), // documentation
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16), // segment routing SIDs
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), // unique local
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 9), // link-local and site-local (deprecated)
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), // multicast
];

/// IPv4-mapped `::ffff:a.b.c.d`.
const MAPPED: Ipv6Net = v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96);
/// IPv4-translated `::ffff:0:a.b.c.d` (SIIT).
const TRANSLATED: Ipv6Net = v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96);
/// NAT64 well-known prefix `64:ff9b::a.b.c.d`: a DNS64 resolver hands out
/// such addresses for public IPv4-only hosts, so only internal ones are
/// refused.
const NAT64: Ipv6Net = v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
/// 6to4 `2002:AABB:CCDD::/48` carries `AA.BB.CC.DD`.
const SIX_TO_FOUR: Ipv6Net = v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);

/// Whether `ip` belongs to a range a guest must not reach unless the
/// manifest names it: loopback, private, link-local (cloud metadata),
/// shared (CGNAT), unspecified, broadcast, multicast, documentation,
/// benchmarking and reserved ranges, and the IPv6 forms that carry or
/// tunnel to such an address.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => INTERNAL_V4.iter().any(|net| net.contains(&v4)),
        IpAddr::V6(v6) => {
            if let Some(carried) = carried_ipv4(v6) {
                return is_internal(IpAddr::V4(carried));
            }
            INTERNAL_V6.iter().any(|net| net.contains(&v6))
        }
    }
}

/// The IPv4 address an IPv6 address stands for, in the forms that carry
/// one in the clear.
fn carried_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = ip.to_bits();
    if [MAPPED, TRANSLATED, NAT64]
        .iter()
        .any(|net| net.contains(&ip))
    {
        return Some(Ipv4Addr::from_bits(bits as u32));
    }
    if SIX_TO_FOUR.contains(&ip) {
        return Some(Ipv4Addr::from_bits((bits >> 80) as u32));
    }
    None
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix)
}

const fn v6(s: [u16; 8], prefix: u8) -> Ipv6Net {
    Ipv6Net::new_assert(
        Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        prefix,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ranges() {
        for internal in [
            // IPv4, one or two per range, edges included.
            "0.0.0.0",
            "0.255.255.255",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.0.170",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            // IPv6 ranges of their own.
            "::",
            "::1",
            "100::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:2::1",
            "2001:10::1",
            "2001:db8::1",
            "3fff::1",
            "5f00::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "64:ff9b:1::1",
            "64:ff9b:1::8.8.8.8",
            // IPv4-compatible, deprecated: refused whatever it carries.
            "::127.0.0.1",
            "::169.254.169.254",
            "::10.0.0.1",
            "::8.8.8.8",
            // Forms carrying an internal IPv4 address.
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0:127.0.0.1",
            "::ffff:0:10.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::169.254.169.254",
            "64:ff9b::192.168.0.1",
            "64:ff9b::198.18.0.1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "2002:c0a8:101::",
            "2002:f000:1::1",
        ] {
            let ip: IpAddr = internal.parse().unwrap();
            assert!(is_internal(ip), "{internal} counts as internal");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450::1",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "::ffff:0:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "64:ff9b::1.1.1.1",
            "2002:808:808::1",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(!is_internal(ip), "{public} counts as public");
        }
    }

    #[test]
    fn carried_addresses_are_read_from_the_right_bits() {
        let carried = |s: &str| carried_ipv4(s.parse().unwrap());
        assert_eq!(carried("::ffff:1.2.3.4"), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(carried("::ffff:0:1.2.3.4"), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(carried("64:ff9b::1.2.3.4"), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(
            carried("2002:102:304:5::6"),
            Some(Ipv4Addr::new(1, 2, 3, 4))
        );
        assert_eq!(carried("2606:4700::1111"), None);
    }
}
