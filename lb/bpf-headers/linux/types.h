/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/* The fixed-width types the kernel's uapi headers and l4lb's BPF programs
 * use, for the BPF target alone: unlike the system's linux/types.h, it
 * needs no architecture header (asm/types.h), so the programs build with
 * the headers in this folder and nothing from the host's multiarch paths. */
#ifndef _LINUX_TYPES_H
#define _LINUX_TYPES_H

typedef signed char __s8;
typedef unsigned char __u8;
typedef signed short __s16;
typedef unsigned short __u16;
typedef signed int __s32;
typedef unsigned int __u32;
typedef signed long long __s64;
typedef unsigned long long __u64;

typedef __u16 __le16;
typedef __u16 __be16;
typedef __u32 __le32;
typedef __u32 __be32;
typedef __u64 __le64;
typedef __u64 __be64;
typedef __u16 __sum16;
typedef __u32 __wsum;

#define __aligned_u64 __u64 __attribute__((aligned(8)))
#define __aligned_be64 __be64 __attribute__((aligned(8)))
#define __aligned_le64 __le64 __attribute__((aligned(8)))

#endif
