package nexuskv

// The gRPC stubs in nexuskvpb/ are generated from the contract, never committed. Offline (Debian
// packages protobuf-compiler, protoc-gen-go, protoc-gen-go-grpc), scripts/debian-offline.sh runs
// this; with internet, see docs/go.md.
//go:generate protoc -I ../../proto --go_out=. --go_opt=module=github.com/nexuskv/nexuskv/clients/go --go-grpc_out=. --go-grpc_opt=module=github.com/nexuskv/nexuskv/clients/go nexuskv/v1/kv_memory.proto
