// A JSON-RPC endpoint that reads MCP requests the way Go MCP servers did before CVE-2026-27896 (mcp-go, the
// official Go SDK, and any home-grown server): encoding/json decoding into structs with json tags. encoding/json
// matches object keys to struct fields case-insensitively, lets the LAST matching key win, and folds U+017F (ſ) to
// "s" and U+212A (K, the Kelvin sign) to "k". So {"name":"get_weather","Name":"delete_all"} runs delete_all here,
// while a parser that matches keys exactly (Python json, serde_json, JSON.parse) reads get_weather.
//
// Standard library only (builds with Debian's golang-go 1.19, nothing downloaded):
//
//	go build -o go_server main.go && ./go_server -addr 127.0.0.1:8083
//
// Every POST is answered 200 with what this server would run, and logged as one JSON line on stdout:
//
//	{"method": "tools/call", "tool": "delete_all", "would_run": "delete_all", "authorization": "Bearer ...",
//	 "path": "/mcp", "id": 1, "body_bytes": 97, "city": "Paris", "progress_token": 1, ...}
//
// `city` is get_weather's `arguments` decoded into a typed struct (as typed tool handlers do), `progress_token`
// is `params._meta.progressToken`: both show the folding one level deeper.
//
// The log holds the Authorization header it received (a test server: the tests read it to see what got through).
// A body encoding/json cannot decode is answered 400 with JSON-RPC -32700 and logged with "error".
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"sync"
)

// The shapes mcp-go and the Go SDK decoded into (field names and tags as theirs; no custom UnmarshalJSON).
type Meta struct {
	ProgressToken interface{} `json:"progressToken,omitempty"`
}

type CallToolParams struct {
	Meta      Meta            `json:"_meta"`
	Name      string          `json:"name"`
	Arguments json.RawMessage `json:"arguments,omitempty"`
	URI       string          `json:"uri,omitempty"`
}

// Typed tool input, as mcp-go's and the Go SDK's typed tool handlers bind `arguments` to a struct.
type WeatherArgs struct {
	City string `json:"city"`
}

type Request struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id,omitempty"`
	Method  string          `json:"method"`
	Params  CallToolParams  `json:"params"`
}

type Seen struct {
	Path          string          `json:"path"`
	Method        string          `json:"method"`
	Tool          string          `json:"tool,omitempty"`
	URI           string          `json:"uri,omitempty"`
	WouldRun      string          `json:"would_run"`
	Arguments     interface{}     `json:"arguments,omitempty"`
	City          string          `json:"city,omitempty"`
	ProgressToken interface{}     `json:"progress_token,omitempty"`
	ID            json.RawMessage `json:"id,omitempty"`
	Authorization string          `json:"authorization"`
	McpMethod     string          `json:"mcp_method,omitempty"`
	McpName       string          `json:"mcp_name,omitempty"`
	BodyBytes     int             `json:"body_bytes"`
	Error         string          `json:"error,omitempty"`
}

var (
	logMu sync.Mutex
	out   = json.NewEncoder(os.Stdout)
)

func record(s Seen) {
	logMu.Lock()
	defer logMu.Unlock()
	if err := out.Encode(s); err != nil {
		log.Printf("log: %v", err)
	}
}

func wouldRun(r Request) string {
	switch r.Method {
	case "tools/call", "prompts/get":
		return r.Params.Name
	case "resources/read":
		return r.Params.URI
	}
	return r.Method
}

func writeJSON(w http.ResponseWriter, status int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func handle(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		writeJSON(w, http.StatusMethodNotAllowed, map[string]interface{}{
			"jsonrpc": "2.0", "id": nil, "error": map[string]interface{}{"code": -32000, "message": "POST only"}})
		return
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, 4<<20))
	if err != nil {
		http.Error(w, "read error", http.StatusBadRequest)
		return
	}
	base := Seen{Path: req.URL.Path, Authorization: req.Header.Get("Authorization"),
		McpMethod: req.Header.Get("Mcp-Method"), McpName: req.Header.Get("Mcp-Name"), BodyBytes: len(body)}

	var batch []Request
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) > 0 && trimmed[0] == '[' {
		err = json.Unmarshal(body, &batch)
	} else {
		var one Request
		err = json.Unmarshal(body, &one)
		batch = []Request{one}
	}
	if err != nil {
		base.Error = err.Error()
		record(base)
		writeJSON(w, http.StatusBadRequest, map[string]interface{}{
			"jsonrpc": "2.0", "id": nil, "error": map[string]interface{}{"code": -32700, "message": "Parse error"}})
		return
	}
	results := make([]interface{}, 0, len(batch))
	for _, r := range batch {
		s := base
		s.Method, s.Tool, s.URI, s.WouldRun, s.ID = r.Method, r.Params.Name, r.Params.URI, wouldRun(r), r.ID
		if len(r.Params.Arguments) > 0 {
			var generic map[string]interface{}
			if json.Unmarshal(r.Params.Arguments, &generic) == nil {
				s.Arguments = generic
			}
			if s.WouldRun == "get_weather" {
				var w WeatherArgs
				if json.Unmarshal(r.Params.Arguments, &w) == nil {
					s.City = w.City
				}
			}
		}
		s.ProgressToken = r.Params.Meta.ProgressToken
		record(s)
		var id interface{} = nil
		if len(r.ID) > 0 {
			id = r.ID
		}
		results = append(results, map[string]interface{}{"jsonrpc": "2.0", "id": id, "result": map[string]interface{}{
			"method": s.Method, "tool": s.Tool, "uri": s.URI, "would_run": s.WouldRun, "city": s.City,
			"progress_token": s.ProgressToken,
			"authorization":  s.Authorization,
			"content":        []interface{}{map[string]interface{}{"type": "text", "text": fmt.Sprintf("ran %s", s.WouldRun)}},
		}})
	}
	if len(trimmed) > 0 && trimmed[0] == '[' {
		writeJSON(w, http.StatusOK, results)
	} else {
		writeJSON(w, http.StatusOK, results[0])
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8083", "listen address")
	flag.Parse()
	http.HandleFunc("/", handle)
	log.SetOutput(os.Stderr)
	log.Printf("go_server listening on %s", *addr)
	log.Fatal(http.ListenAndServe(*addr, nil))
}
