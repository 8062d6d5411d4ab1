package parser

import "testing"

func BenchmarkParseCommand(b *testing.B) {
	for _, l := range []string{"PORT 192,0,2,10,200,1", "EPRT |2|2001:db8::10|40001|", "RETR some/file.bin"} {
		line := []byte(l)
		b.Run(l[:4], func(b *testing.B) {
			b.SetBytes(int64(len(line) + 2))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := ParseCommand(line); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkParseReply(b *testing.B) {
	line := []byte("227 Entering Passive Mode (198,51,100,20,156,65).")
	b.SetBytes(int64(len(line) + 2))
	b.ReportAllocs()
	for b.Loop() {
		r := ParseReplyLine(line)
		if _, err := ParsePASVReply(r.Text); err != nil {
			b.Fatal(err)
		}
	}
}
