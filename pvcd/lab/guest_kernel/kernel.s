# pvcd lab guest: a multiboot kernel that announces itself on the serial port, records the TSC
# at boot, and then sleeps in `hlt` (no CPU use). The ACPI power button powers it off, so
# libvirt's graceful `shutdown()` works in milliseconds instead of timing out.
#
# Built by pvcd/lab/qemu_guest.py with `as --32` and `ld -m elf_i386 -T kernel.ld`.
# Assumes QEMU's `pc` machine: COM1 at 0x3f8, PIIX4 power management at PCI 00:01.3, SCI on
# IRQ 9 of the 8259 pair (the firmware leaves the local APIC in virtual-wire mode).

        .set MB_MAGIC, 0x1badb002
        .set MB_FLAGS, 0                        # ELF image: no address fields needed
        .set COM1, 0x3f8
        .set PIIX4_PM_ID, 0x71138086            # vendor/device of PCI 00:01.3
        .set PCI_00_01_3, 0x80000b00            # config address of 00:01.3, register 0
        .set PWRBTN, 0x0100                     # PM1 status/enable bit of the power button
        .set SLP_EN_S5, 0x2000                  # PM1 control: sleep enable, type 0 (soft off)

        .section .multiboot, "a"
        .align 4
        .long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

        # Read by the tests through QEMU's monitor (`xp`): a value only this boot could write.
        .section .stamp, "aw"
        .global boot_stamp
boot_stamp:
        .long 0x50564344, 0                     # "PVCD" until the boot code overwrites it
        .long 0, 0                              # TSC at boot (low, high)

        .text
        .code32
        .global _start
_start:
        cli
        lgdt gdt_descriptor                     # the loader's GDT is not ours to rely on
        ljmp $0x08, $1f
1:      mov $0x10, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov $stack_top, %esp

        rdtsc
        mov %eax, boot_stamp + 8
        mov %edx, boot_stamp + 12
        movl $0x55505650, boot_stamp + 4         # "PVPU": booted

        mov $msg_up, %esi
        call serial_puts

        call setup_idt
        call setup_pic
        call setup_power_button

idle:   sti
        hlt                                     # sti's one-instruction shadow: no lost wakeup
        jmp idle

# %esi: NUL-terminated string to COM1 (QEMU's UART needs no set-up).
serial_puts:
        mov $COM1, %dx
2:      lodsb
        test %al, %al
        jz 3f
        out %al, %dx
        jmp 2b
3:      ret

setup_idt:
        mov $idt, %edi
        xor %ecx, %ecx
4:      mov $irq_entry, %eax
        cmp $32, %ecx
        jae 5f
        mov $fault_entry, %eax                  # vectors 0-31: CPU exceptions
5:      mov %ax, (%edi)                         # offset 0..15
        movw $0x08, 2(%edi)                     # code selector
        movw $0x8e00, 4(%edi)                   # present, ring 0, 32-bit interrupt gate
        shr $16, %eax
        mov %ax, 6(%edi)                        # offset 16..31
        add $8, %edi
        inc %ecx
        cmp $256, %ecx
        jb 4b
        lidt idt_descriptor
        ret

# Remap the 8259s to vectors 0x20/0x28 and unmask only the cascade (IRQ 2) and the SCI (IRQ 9).
setup_pic:
        mov $0x11, %al
        out %al, $0x20
        out %al, $0xa0
        mov $0x20, %al
        out %al, $0x21
        mov $0x28, %al
        out %al, $0xa1
        mov $0x04, %al
        out %al, $0x21
        mov $0x02, %al
        out %al, $0xa1
        mov $0x01, %al
        out %al, $0x21
        out %al, $0xa1
        mov $0xfb, %al
        out %al, $0x21
        mov $0xfd, %al
        out %al, $0xa1
        ret

# Find the PIIX4 PM I/O base (set by the firmware) and enable the power button event.
setup_power_button:
        mov $PCI_00_01_3, %eax
        mov $0xcf8, %dx
        out %eax, %dx
        mov $0xcfc, %dx
        in %dx, %eax
        cmp $PIIX4_PM_ID, %eax
        jne 6f
        mov $PCI_00_01_3 + 0x40, %eax           # PMBA
        mov $0xcf8, %dx
        out %eax, %dx
        mov $0xcfc, %dx
        in %dx, %eax
        and $0xffc0, %eax
        jz 6f
        mov %ax, pm_base
        mov %ax, %dx
        mov $PWRBTN, %ax
        out %ax, %dx                            # clear a stale status (write 1 to clear)
        add $2, %dx
        out %ax, %dx                            # PM1_EN: power button
        ret
6:      mov $msg_no_acpi, %esi
        call serial_puts
        ret

# Any hardware interrupt: if it is the power button, power off; else acknowledge and return.
irq_entry:
        push %eax
        push %edx
        push %esi
        mov pm_base, %dx
        test %dx, %dx
        jz 7f
        in %dx, %ax
        test $PWRBTN, %ax
        jz 7f
        mov $msg_off, %esi
        call serial_puts
        mov pm_base, %dx
        mov $PWRBTN, %ax
        out %ax, %dx                            # clear the status: lowers the SCI
        add $4, %dx
        mov $SLP_EN_S5, %ax
        out %ax, %dx                            # PM1_CNT: soft off
7:      mov $0x20, %al
        out %al, $0xa0
        out %al, $0x20
        pop %esi
        pop %edx
        pop %eax
        iret

fault_entry:
        mov $msg_fault, %esi
        call serial_puts
8:      cli
        hlt
        jmp 8b

        .section .rodata
msg_up:         .asciz "pvcd-guest: up\r\n"
msg_off:        .asciz "pvcd-guest: power button, powering off\r\n"
msg_no_acpi:    .asciz "pvcd-guest: no PIIX4 power management, power button ignored\r\n"
msg_fault:      .asciz "pvcd-guest: CPU exception, halted\r\n"

        .align 8
gdt:    .quad 0
        .quad 0x00cf9a000000ffff                # 0x08: flat 32-bit code
        .quad 0x00cf92000000ffff                # 0x10: flat data
gdt_descriptor:
        .word gdt_descriptor - gdt - 1
        .long gdt

idt_descriptor:
        .word 256 * 8 - 1
        .long idt

        .data
pm_base:        .word 0

        .bss
        .align 16
idt:    .skip 256 * 8
stack:  .skip 4096
stack_top:

        .section .note.GNU-stack, "", @progbits
