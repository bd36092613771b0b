/*
 * uml-xstate-pad.so: preloaded into linux.uml by tools/uml-run.
 *
 * UML keeps each guest process's FPU state in a buffer sized for the XSAVE features it knows
 * (x87, SSE, AVX, AVX-512) and restores it with PTRACE_SETREGSET(NT_X86_XSTATE). The host
 * kernel accepts that call only with a buffer at least as large as its whole user XSAVE area;
 * on a CPU with AMX (tile data: 8 KiB more, 11008 bytes in all) UML's buffer is too short, the
 * call fails with EFAULT and the guest's init dies of SIGSEGV at its first instruction
 * ("userspace - ptrace set fp regs failed, errno = 14", Debian's 6.1 and 6.12 kernels alike).
 *
 * This wrapper hands the kernel UML's bytes at the front of a zeroed buffer large enough for
 * any XSAVE area. The XSAVE header inside UML's bytes says which components are present; the
 * larger ones (AMX) are absent from it, so the zeros after them are never loaded.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <stdarg.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

/* Larger than any XSAVE area so far (11008 bytes with AMX); a static buffer, because UML calls
 * this on its own small kernel stacks, from one host thread. */
#define WHOLE_XSTATE_SIZE 65536
static unsigned char whole_xstate[WHOLE_XSTATE_SIZE];

long ptrace(enum __ptrace_request request, ...)
{
    static long (*libc_ptrace)(enum __ptrace_request, ...);
    va_list args;
    va_start(args, request);
    pid_t pid = va_arg(args, pid_t);
    void *addr = va_arg(args, void *);
    void *data = va_arg(args, void *);
    va_end(args);
    if (!libc_ptrace)
        libc_ptrace = (long (*)(enum __ptrace_request, ...))dlsym(RTLD_NEXT, "ptrace");
    if (request == PTRACE_SETREGSET && (unsigned long)addr == NT_X86_XSTATE && data) {
        const struct iovec *given = data;
        if (given->iov_len < WHOLE_XSTATE_SIZE) {
            struct iovec whole = {whole_xstate, WHOLE_XSTATE_SIZE};
            memset(whole_xstate, 0, WHOLE_XSTATE_SIZE);
            memcpy(whole_xstate, given->iov_base, given->iov_len);
            return libc_ptrace(request, pid, addr, &whole);
        }
    }
    return libc_ptrace(request, pid, addr, data);
}
