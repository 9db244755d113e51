//! Device access control: v1 devices.allow/deny lists, and on cgroup v2 an
//! eBPF program of type BPF_PROG_TYPE_CGROUP_DEVICE attached to the cgroup.

use std::os::fd::AsRawFd;
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::fs;
use crate::{Error, Result};

/// The device rules runc always appends after the configured ones, so the
/// standard /dev nodes a runtime creates stay usable.
pub fn default_allowed() -> Vec<Rule> {
    let rule = |typ, major, minor, access: &str| Rule {
        allow: true,
        typ,
        major,
        minor,
        access: access_bits(access),
    };
    vec![
        rule('c', None, None, "m"),
        rule('b', None, None, "m"),
        rule('c', Some(1), Some(3), "rwm"), // null
        rule('c', Some(1), Some(5), "rwm"), // zero
        rule('c', Some(1), Some(7), "rwm"), // full
        rule('c', Some(5), Some(0), "rwm"), // tty
        rule('c', Some(1), Some(8), "rwm"), // random
        rule('c', Some(1), Some(9), "rwm"), // urandom
        rule('c', Some(5), Some(1), "rwm"), // console
        rule('c', Some(136), None, "rwm"),  // pts
        rule('c', Some(5), Some(2), "rwm"), // ptmx
    ]
}

/// One normalised rule: type 'a', 'b' or 'c'; None is a wildcard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    pub typ: char,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    /// Bits: 1 mknod, 2 read, 4 write (the kernel's BPF_DEVCG_ACC_* values).
    pub access: u32,
}

fn access_bits(access: &str) -> u32 {
    access.chars().fold(0, |acc, c| {
        acc | match c {
            'm' => 1,
            'r' => 2,
            'w' => 4,
            _ => 0,
        }
    })
}

pub fn validate(rules: &[LinuxDeviceCgroup]) -> Result<()> {
    for r in rules {
        if let Some(a) = r.access() {
            if a.is_empty() || !a.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
                return Err(Error::invalid_resource(format!(
                    "device rule access {a:?} must be letters of \"rwm\""
                )));
            }
        }
        for n in [r.major(), r.minor()].into_iter().flatten() {
            if n < -1 {
                return Err(Error::invalid_resource(format!(
                    "device rule number {n} is negative"
                )));
            }
        }
        if matches!(r.typ(), Some(LinuxDeviceType::U) | Some(LinuxDeviceType::P)) {
            return Err(Error::invalid_resource(format!(
                "device rule type {:?} is not a cgroup device type (a, b or c)",
                r.typ().unwrap()
            )));
        }
    }
    Ok(())
}

/// The configured rules followed by runc's defaults.
pub fn rules(config: &[LinuxDeviceCgroup]) -> Vec<Rule> {
    let mut out: Vec<Rule> = config
        .iter()
        .map(|r| Rule {
            allow: r.allow(),
            typ: match r.typ() {
                Some(LinuxDeviceType::B) => 'b',
                Some(LinuxDeviceType::C) => 'c',
                _ => 'a',
            },
            major: r.major().filter(|m| *m >= 0),
            minor: r.minor().filter(|m| *m >= 0),
            access: r.access().as_deref().map(access_bits).unwrap_or(7),
        })
        .collect();
    if !config.is_empty() {
        out.extend(default_allowed());
    }
    out
}

fn v1_line(r: &Rule) -> String {
    let n = |v: Option<i64>| v.map_or("*".to_owned(), |v| v.to_string());
    let access: String = [(2, 'r'), (4, 'w'), (1, 'm')]
        .iter()
        .filter(|(bit, _)| r.access & bit != 0)
        .map(|(_, c)| *c)
        .collect();
    if r.typ == 'a' {
        format!("a *:* {access}")
    } else {
        format!("{} {}:{} {access}", r.typ, n(r.major), n(r.minor))
    }
}

/// Writes the rules in order to devices.allow / devices.deny: the v1
/// controller applies them exactly with the semantics the spec describes.
pub fn apply_v1(dir: &Path, config: &[LinuxDeviceCgroup]) -> Result<()> {
    // Each write(2) is one rule: both files are opened once, not per rule.
    let mut allow = fs::RuleWriter::new(dir, "devices.allow");
    let mut deny = fs::RuleWriter::new(dir, "devices.deny");
    for r in rules(config) {
        let writer = if r.allow { &mut allow } else { &mut deny };
        writer.write(&v1_line(&r))?;
    }
    Ok(())
}

// eBPF instruction encoding (see include/uapi/linux/bpf.h).
#[derive(Clone, Copy)]
struct Insn(u8, u8, i16, i32);

const LDX_MEM_W: u8 = 0x61;
const MOV64_IMM: u8 = 0xb7;
const MOV64_REG: u8 = 0xbf;
const AND64_IMM: u8 = 0x57;
const RSH64_IMM: u8 = 0x77;
const JNE_IMM: u8 = 0x55;
const JNE_REG: u8 = 0x5d;
const EXIT: u8 = 0x95;

fn regs(dst: u8, src: u8) -> u8 {
    (src << 4) | dst
}

/// Compiles rules into a cgroup device program. The last matching rule
/// decides, as the v1 controller's list semantics do: an allow rule matches
/// when it grants every requested access, a deny rule when it covers any.
/// With no rule matching, access is allowed (a cgroup's initial state).
pub fn compile(rules: &[Rule]) -> Vec<u64> {
    let mut prog: Vec<Insn> = vec![
        Insn(LDX_MEM_W, regs(2, 1), 0, 0),      // r2 = ctx->access_type
        Insn(MOV64_REG, regs(3, 2), 0, 0),      // r3 = r2
        Insn(AND64_IMM, regs(3, 0), 0, 0xffff), // r3 = type (1 block, 2 char)
        Insn(RSH64_IMM, regs(2, 0), 0, 16),     // r2 = requested access
        Insn(LDX_MEM_W, regs(4, 1), 4, 0),      // r4 = major
        Insn(LDX_MEM_W, regs(5, 1), 8, 0),      // r5 = minor
    ];
    for rule in rules.iter().rev() {
        let mut block: Vec<Insn> = Vec::new();
        if rule.typ != 'a' {
            let t = if rule.typ == 'b' { 1 } else { 2 };
            block.push(Insn(JNE_IMM, regs(3, 0), 0, t));
        }
        if rule.allow {
            // requested & !granted must be 0
            block.push(Insn(MOV64_REG, regs(6, 2), 0, 0));
            block.push(Insn(AND64_IMM, regs(6, 0), 0, !(rule.access as i32) & 7));
            block.push(Insn(JNE_IMM, regs(6, 0), 0, 0));
        } else {
            // requested & denied must be non-zero: skip when it is 0
            block.push(Insn(MOV64_REG, regs(6, 2), 0, 0));
            block.push(Insn(AND64_IMM, regs(6, 0), 0, rule.access as i32));
            block.push(Insn(MOV64_IMM, regs(7, 0), 0, 0));
            block.push(Insn(0x1d, regs(6, 7), 0, 0)); // JEQ r6, r7 -> next
        }
        if let Some(major) = rule.major {
            block.push(Insn(JNE_IMM, regs(4, 0), 0, major as i32));
        }
        if let Some(minor) = rule.minor {
            block.push(Insn(JNE_IMM, regs(5, 0), 0, minor as i32));
        }
        block.push(Insn(MOV64_IMM, regs(0, 0), 0, rule.allow as i32));
        block.push(Insn(EXIT, 0, 0, 0));
        // Every jump in the block skips to the block's end.
        let len = block.len();
        for (i, insn) in block.iter_mut().enumerate() {
            if matches!(insn.0, JNE_IMM | JNE_REG | 0x1d) {
                insn.2 = (len - i - 1) as i16;
            }
        }
        prog.extend(block);
    }
    prog.push(Insn(MOV64_IMM, regs(0, 0), 0, 1));
    prog.push(Insn(EXIT, 0, 0, 0));
    prog.iter()
        .map(|i| {
            (i.0 as u64)
                | ((i.1 as u64) << 8)
                | ((i.2 as u16 as u64) << 16)
                | ((i.3 as u32 as u64) << 32)
        })
        .collect()
}

/// Loads the program for `config` and attaches it to the cgroup, replacing
/// programs attached before (update): attach first, then detach the old
/// ones, so there is no moment without a filter.
pub fn apply_v2(dir: &Path, config: &[LinuxDeviceCgroup]) -> Result<()> {
    if config.is_empty() {
        return Ok(());
    }
    let insns = compile(&rules(config));
    let cgroup = std::fs::File::open(dir).map_err(|source| Error::Read {
        path: dir.to_owned(),
        source,
    })?;
    let old = crate::bpf::attached_device_programs(cgroup.as_raw_fd()).unwrap_or_default();
    let prog = crate::bpf::load_device_program(&insns).map_err(|source| Error::Write {
        file: dir.to_owned(),
        value: "device filter (BPF_PROG_LOAD)".into(),
        source,
    })?;
    crate::bpf::attach_device_program(cgroup.as_raw_fd(), prog.as_raw_fd()).map_err(|source| {
        Error::Write {
            file: dir.to_owned(),
            value: "device filter (BPF_PROG_ATTACH)".into(),
            source,
        }
    })?;
    for id in old {
        if let Ok(fd) = crate::bpf::prog_fd_by_id(id) {
            let _ = crate::bpf::detach_device_program(cgroup.as_raw_fd(), fd.as_raw_fd());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a compiled program on a request in a tiny interpreter of the
    /// instructions `compile` emits, to check the semantics without a kernel.
    fn run(prog: &[u64], typ: u32, access: u32, major: u32, minor: u32) -> u64 {
        let mut r = [0u64; 11];
        let ctx = [(access << 16) | typ, major, minor];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let op = (i & 0xff) as u8;
            let dst = ((i >> 8) & 0xf) as usize;
            let src = ((i >> 12) & 0xf) as usize;
            let off = ((i >> 16) & 0xffff) as u16 as i16;
            let imm = (i >> 32) as u32 as i32;
            pc += 1;
            match op {
                LDX_MEM_W => r[dst] = ctx[(off / 4) as usize] as u64,
                MOV64_IMM => r[dst] = imm as i64 as u64,
                MOV64_REG => r[dst] = r[src],
                AND64_IMM => r[dst] &= imm as i64 as u64,
                RSH64_IMM => r[dst] >>= imm,
                JNE_IMM => {
                    if r[dst] != imm as i64 as u64 {
                        pc = (pc as i64 + off as i64) as usize
                    }
                }
                0x1d => {
                    if r[dst] == r[src] {
                        pc = (pc as i64 + off as i64) as usize
                    }
                }
                EXIT => return r[0],
                _ => panic!("unexpected opcode {op:#x}"),
            }
        }
    }

    fn rule(allow: bool, typ: char, major: Option<i64>, minor: Option<i64>, access: &str) -> Rule {
        Rule {
            allow,
            typ,
            major,
            minor,
            access: access_bits(access),
        }
    }

    #[test]
    fn last_matching_rule_decides() {
        let rules = vec![
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'c', Some(1), Some(3), "rw"),
            rule(true, 'c', Some(136), None, "rwm"),
            rule(false, 'c', Some(136), Some(7), "w"),
        ];
        let prog = compile(&rules);
        let (r, w, m) = (2, 4, 1);
        assert_eq!(run(&prog, 2, r | w, 1, 3), 1, "null rw allowed");
        assert_eq!(run(&prog, 2, m, 1, 3), 0, "null mknod denied");
        assert_eq!(run(&prog, 1, r, 1, 3), 0, "block 1:3 denied");
        assert_eq!(run(&prog, 2, r, 136, 4), 1, "pts read allowed");
        assert_eq!(run(&prog, 2, w, 136, 7), 0, "pts 7 write denied");
        assert_eq!(run(&prog, 2, r, 136, 7), 1, "pts 7 read allowed");
        assert_eq!(run(&prog, 2, r, 10, 200), 0, "tun denied");
        assert_eq!(run(&compile(&[]), 1, r, 8, 0), 1, "no rules: allowed");
    }

    #[test]
    fn v1_lines() {
        assert_eq!(v1_line(&rule(false, 'a', None, None, "rwm")), "a *:* rwm");
        assert_eq!(v1_line(&rule(true, 'c', Some(1), None, "mr")), "c 1:* rm");
    }
}
