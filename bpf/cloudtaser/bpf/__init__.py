"""The node agent: CO-RE BPF programs loaded through libbpf, maps filled from the Plan."""
